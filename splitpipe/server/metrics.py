"""Server-side counters and latency percentiles, and the periodic log line.

Plain counters for now; a Prometheus exporter can read :meth:`Metrics.snapshot`. Latencies are
the server's own ``total_us`` (request received to response ready), measured, not estimated.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Latency samples kept per interval; beyond this the percentiles use the first ones.
_MAX_SAMPLES = 100_000


@dataclass
class _ModelCounters:
    requests: int = 0
    failures: int = 0
    batches: int = 0
    rows: int = 0
    batched_requests: int = 0
    tail_us: int = 0
    latencies_us: list[int] = field(default_factory=list)  # since the last log line


class Metrics:
    """Counters per model; thread-safe (tail threads count batches, the event loop requests)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, _ModelCounters] = {}
        self._failures: Counter[str] = Counter()  # status code name -> count, all models
        self._last_log = time.monotonic()
        self._last_requests: dict[str, int] = {}

    def _model(self, name: str) -> _ModelCounters:
        counters = self._models.get(name)
        if counters is None:
            counters = self._models[name] = _ModelCounters()
        return counters

    def request_done(self, model: str, total_us: int) -> None:
        with self._lock:
            counters = self._model(model)
            counters.requests += 1
            if len(counters.latencies_us) < _MAX_SAMPLES:
                counters.latencies_us.append(total_us)

    def request_failed(self, model: str | None, code: str) -> None:
        with self._lock:
            self._failures[code] += 1
            if model is not None:
                self._model(model).failures += 1

    def batch_done(self, model: str, rows: int, requests: int, tail_us: int) -> None:
        with self._lock:
            counters = self._model(model)
            counters.batches += 1
            counters.rows += rows
            counters.batched_requests += requests
            counters.tail_us += tail_us

    def snapshot(self) -> dict[str, Any]:
        """Totals since start: per model requests, failures, batches, rows, mean batch size."""
        with self._lock:
            return {
                "failures_by_code": dict(self._failures),
                "models": {
                    name: {
                        "requests": c.requests,
                        "failures": c.failures,
                        "batches": c.batches,
                        "rows": c.rows,
                        "mean_batch_rows": c.rows / c.batches if c.batches else 0.0,
                        "tail_us_total": c.tail_us,
                    }
                    for name, c in self._models.items()
                },
            }

    def interval_lines(self) -> list[str]:
        """One line per model that served requests since the last call: rate and latency."""
        now = time.monotonic()
        with self._lock:
            elapsed = max(now - self._last_log, 1e-9)
            self._last_log = now
            lines = []
            for name, c in self._models.items():
                served = c.requests - self._last_requests.get(name, 0)
                self._last_requests[name] = c.requests
                samples, c.latencies_us = c.latencies_us, []
                if not served:
                    continue
                p50, p90, p99 = (float(v) / 1e3 for v in np.percentile(samples, [50, 90, 99]))
                lines.append(
                    f"{name}: {served / elapsed:.1f} req/s, server latency p50 {p50:.2f} ms "
                    f"p90 {p90:.2f} ms p99 {p99:.2f} ms (measured), mean batch "
                    f"{c.rows / c.batches if c.batches else 0:.2f} rows, {c.failures} failed in total"
                )
            return lines
