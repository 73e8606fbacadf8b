"""A Trainer hook that logs each epoch's record to TensorBoard (``train.tensorboard: true``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict


class TensorBoardLogger:
    """Writes every number of an epoch record (loss, lr, seconds, test_* metrics) as a scalar.

    Args:
        log_dir: the event-file folder, ``<run>/tensorboard``.
    """

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError("train.tensorboard needs the 'tensorboard' extra: pip install -e '.[tensorboard]'") from e
        from metricvision.engine.distributed import get_rank

        # one writer per run: in distributed training every rank holds the same record
        self.writer = SummaryWriter(str(log_dir)) if get_rank() == 0 else None

    def on_epoch_end(self, trainer: Any, epoch: int, record: Dict[str, Any]) -> None:
        """Log the record of ``epoch`` (1-based, as the Trainer counts finished epochs)."""
        if self.writer is None:
            return
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, epoch)
        self.writer.flush()
