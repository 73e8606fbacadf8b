"""Who may call the API: API keys with read / write scopes, and a per-client rate limit."""
from __future__ import annotations

import fcntl
import hashlib
import hmac
import mmap
import os
import threading
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

SCOPES = ("read", "write")
ENV_KEYS = "METRICVISION_API_KEYS"


class ApiKeys:
    """API keys and their scope; "write" includes "read".

    Args:
        keys: key -> scope ("read" or "write").
    """

    def __init__(self, keys: Dict[str, str]) -> None:
        for key, scope in keys.items():
            if scope not in SCOPES:
                raise ValueError(f"API key scope must be one of {SCOPES}, got '{scope}'")
            if len(key) < 16:
                raise ValueError(f"API keys must be at least 16 characters, got one of {len(key)}")
        self.keys = dict(keys)

    @classmethod
    def parse(cls, text: str, source: str) -> "ApiKeys":
        """Keys from lines or comma-separated entries ``KEY SCOPE`` / ``KEY:SCOPE``; '#' starts a comment."""
        keys: Dict[str, str] = {}
        for n, entry in enumerate(text.replace(",", "\n").splitlines(), 1):
            entry = entry.split("#", 1)[0].strip()
            if not entry:
                continue
            parts = entry.replace(":", " ").split()
            if len(parts) != 2:
                raise ValueError(f"{source} entry {n}: expected 'KEY SCOPE' (scope read or write), got {len(parts)} fields")
            keys[parts[0]] = parts[1]
        return cls(keys)

    @classmethod
    def load(cls, path: Optional[str | os.PathLike] = None) -> Optional["ApiKeys"]:
        """Keys from ``path`` or else the METRICVISION_API_KEYS variable; None when neither is set (open access)."""
        if path is not None:
            return cls.parse(Path(path).read_text(), str(path))
        if os.environ.get(ENV_KEYS):
            return cls.parse(os.environ[ENV_KEYS], ENV_KEYS)
        return None

    def scope(self, presented: Optional[str]) -> Optional[str]:
        """The scope of a presented key, None when it is missing or unknown (compared in constant time)."""
        if not presented:
            return None
        found = None
        for key, scope in self.keys.items():
            if hmac.compare_digest(key.encode(), presented.encode()):
                found = scope
        return found


def allows(scope: Optional[str], needed: str) -> bool:
    """Whether ``scope`` grants ``needed`` ("write" includes "read")."""
    return scope == needed or (scope == "write" and needed == "read")


class RateLimiter:
    """Token bucket per client: ``rate`` requests per second, bursts up to ``burst``.

    Args:
        rate: sustained requests per second per client.
        burst: bucket size.
        max_clients: buckets kept (the least recently seen are dropped beyond).
    """

    def __init__(self, rate: float, burst: int, max_clients: int = 10000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got {rate} and {burst}")
        self.rate, self.burst, self.max_clients = rate, burst, max_clients
        self._buckets: Dict[str, Tuple[float, float]] = {}
        self._lock = threading.Lock()

    def spend(self, tokens: float, last: float, now: float) -> Tuple[float, float]:
        """(tokens left, seconds to wait) after one request at ``now`` on a bucket of ``tokens`` at ``last``."""
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        return (tokens - 1 if wait == 0 else tokens), wait

    def take(self, client: str) -> float:
        """Spend one token of ``client``: 0.0 when allowed, else the seconds until one is available."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.pop(client, (float(self.burst), now))
            tokens, wait = self.spend(tokens, last, now)
            self._buckets[client] = (tokens, now)
            if len(self._buckets) > self.max_clients:
                self._buckets.pop(next(iter(self._buckets)))
        return wait


class SharedRateLimiter(RateLimiter):
    """The token buckets of ``RateLimiter`` in a file that the processes of `serve --workers N` share,
    so a client has one budget whichever process takes its connection.

    ``slots`` (tokens, last) float64 pairs live in a memory map of ``path``; a client is hashed to a slot
    (clients that collide share a bucket) and the slot is read and written under an exclusive ``flock``
    of the file. Times are CLOCK_MONOTONIC, the same in every process of the machine.

    Args:
        rate, burst: as ``RateLimiter``.
        path: the shared file (created, and sized, when missing or short).
        slots: buckets in the file.
    """

    def __init__(self, rate: float, burst: int, path: str | os.PathLike, slots: int = 65536) -> None:
        super().__init__(rate, burst)
        self.slots = slots
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size < 16 * slots:
            os.ftruncate(self._fd, 16 * slots)
        self._table = np.frombuffer(mmap.mmap(self._fd, 16 * slots), dtype=np.float64).reshape(slots, 2)

    def take(self, client: str) -> float:
        """Spend one token of ``client`` in the shared table: 0.0 when allowed, else the seconds to wait."""
        slot = int.from_bytes(hashlib.blake2b(client.encode(), digest_size=8).digest(), "little") % self.slots
        now = time.monotonic()
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                tokens, last = self._table[slot]
                if last == 0:  # a slot never used (monotonic time is > 0)
                    tokens, last = float(self.burst), now
                tokens, wait = self.spend(tokens, last, now)
                self._table[slot] = (tokens, now)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        return wait


def rate_limiter(rate: Optional[float], burst: int, table: Optional[str] = None) -> Optional[RateLimiter]:
    """None without a rate; the buckets in ``table`` (a file shared by processes) when given, else in memory."""
    if not rate:
        return None
    return SharedRateLimiter(rate, burst, table) if table else RateLimiter(rate, burst)
