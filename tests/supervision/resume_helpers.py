"""A kill between two epochs, for resume tests: the checkpoint of the last finished epoch is on disk."""


class Killed(Exception):
    """Raised by ``KillAt`` in place of a SIGKILL."""


class KillAt:
    """Hook raising ``Killed`` at the start of epoch ``epoch`` (0-based), after epoch ``epoch`` - 1 was saved."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_start(self, trainer, epoch: int) -> None:
        if epoch == self.epoch:
            raise Killed
