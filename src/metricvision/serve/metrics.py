"""Request counts and latencies in the Prometheus text exposition format (no client library needed)."""
from __future__ import annotations

import threading
from collections import defaultdict
from typing import Dict, List, Tuple

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestMetrics:
    """Thread-safe counters: requests by (method, route, status) and a latency histogram by route.

    Args:
        buckets: histogram upper bounds in seconds (+Inf is added).
    """

    def __init__(self, buckets: Tuple[float, ...] = BUCKETS) -> None:
        self.buckets = tuple(sorted(buckets))
        self._lock = threading.Lock()
        self._requests: Dict[Tuple[str, str, int], int] = defaultdict(int)
        self._hist: Dict[Tuple[str, str], List[int]] = defaultdict(lambda: [0] * (len(self.buckets) + 1))
        self._sum: Dict[Tuple[str, str], float] = defaultdict(float)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one request and its latency."""
        with self._lock:
            self._requests[(method, route, status)] += 1
            counts = self._hist[(method, route)]
            for i, b in enumerate(self.buckets):
                if seconds <= b:
                    counts[i] += 1
            counts[-1] += 1
            self._sum[(method, route)] += seconds

    def render(self) -> str:
        """The metrics as Prometheus text."""
        lines = ["# HELP metricvision_requests_total HTTP requests by method, route and status.",
                 "# TYPE metricvision_requests_total counter"]
        with self._lock:
            for (m, r, s), n in sorted(self._requests.items()):
                lines.append(f'metricvision_requests_total{{method="{m}",route="{_esc(r)}",status="{s}"}} {n}')
            lines += ["# HELP metricvision_request_duration_seconds HTTP request latency.",
                      "# TYPE metricvision_request_duration_seconds histogram"]
            for (m, r), counts in sorted(self._hist.items()):
                labels = f'method="{m}",route="{_esc(r)}"'
                for b, c in zip(self.buckets, counts):
                    lines.append(f'metricvision_request_duration_seconds_bucket{{{labels},le="{b}"}} {c}')
                lines.append(f'metricvision_request_duration_seconds_bucket{{{labels},le="+Inf"}} {counts[-1]}')
                lines.append(f"metricvision_request_duration_seconds_sum{{{labels}}} {self._sum[(m, r)]:.6f}")
                lines.append(f"metricvision_request_duration_seconds_count{{{labels}}} {counts[-1]}")
        return "\n".join(lines) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
