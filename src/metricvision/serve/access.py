"""Who may call the API: API keys with read / write scopes, and a per-client rate limit."""
from __future__ import annotations

import hmac
import os
import threading
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

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

    def take(self, client: str) -> float:
        """Spend one token of ``client``: 0.0 when allowed, else the seconds until one is available."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            self._buckets[client] = (tokens - 1 if wait == 0 else tokens, now)
            if len(self._buckets) > self.max_clients:
                self._buckets.pop(next(iter(self._buckets)))
        return wait
