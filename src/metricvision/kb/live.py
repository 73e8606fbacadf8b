"""LiveKB: a reader that follows a KB's committed version while it is being written.

A background thread polls ``index/CURRENT`` and, when another version is committed,
opens it (holding a lease, so pruning cannot delete it) and swaps it in. Index files the
new version shares with the loaded one (the base, older segments) are not read again:
a version that only adds a delta segment loads in milliseconds at any KB size. Requests take
``snapshot()`` once and use that object throughout, so each request sees one version;
the old version's lease is released when the last request holding it drops it.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Optional

from metricvision.kb.store import KnowledgeBase


class LiveKB:
    """The latest committed version of the KB at ``path``, reloaded within ``poll_s`` seconds.

    Args:
        path: the KB folder.
        poll_s: seconds between checks of CURRENT.
    """

    def __init__(self, path: str | os.PathLike, poll_s: float = 0.2) -> None:
        if poll_s <= 0:
            raise ValueError(f"poll_s must be > 0, got {poll_s}")
        self._kb = KnowledgeBase.open(path)
        self.path, self.poll_s = self._kb.path, poll_s
        self.error: Optional[str] = None  # why the last reload failed (the previous version keeps serving)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"LiveKB({self.path})", daemon=True)
        self._thread.start()

    def snapshot(self) -> KnowledgeBase:
        """The newest loaded version; hold the object for the whole request."""
        return self._kb

    def refresh(self, verify: bool = True) -> KnowledgeBase:
        """Load the committed version now if it is newer (writers call this after a commit).

        Args:
            verify: check its checksums; a writer of this process that has just written and
                hashed the files passes False.
        """
        with self._lock:
            try:
                latest = self._kb.latest(verify)
                self.error = None
            except Exception as e:  # a broken new version must not stop the one being served
                self.error = f"cannot load version {self._kb.store.current()}: {e}"
                return self._kb
            if latest is not self._kb:
                latest.model  # noqa: B018  (shared with the previous snapshot: nothing is rebuilt)
                self._kb = latest
        return self._kb

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.refresh()

    def close(self, timeout: float = 5.0) -> None:
        """Stop following CURRENT."""
        self._stop.set()
        self._thread.join(timeout)

    @property
    def lag_s(self) -> float:
        """Seconds since CURRENT changed without this reader following (0 when up to date)."""
        try:
            changed = (self.path / "index" / "CURRENT").stat().st_mtime
        except FileNotFoundError:
            return 0.0
        return 0.0 if self._kb.store.current() == self._kb.version else max(0.0, time.time() - changed)
