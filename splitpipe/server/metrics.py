"""Server-side counters and latency percentiles, and the periodic log line.

Plain counters, which :func:`start_exporter` serves to Prometheus (``splitpipe serve
--metrics-port``). Latencies are the server's own ``total_us`` (request received to response
ready), measured, not estimated.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Latency samples kept per interval; beyond this the percentiles use the first ones.
_MAX_SAMPLES = 100_000
#: upper bounds (seconds) of the request latency histogram's buckets
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_BUCKETS_US = [int(b * 1e6) for b in LATENCY_BUCKETS_S]


@dataclass
class _ModelCounters:
    requests: int = 0
    failures: int = 0
    batches: int = 0
    rows: int = 0
    batched_requests: int = 0
    tail_us: int = 0
    latencies_us: list[int] = field(default_factory=list)  # since the last log line
    latency_total_us: int = 0  # since start, for the histogram's sum
    buckets: list[int] = field(default_factory=lambda: [0] * (len(_BUCKETS_US) + 1))  # per bucket, +Inf last


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
            counters.latency_total_us += total_us
            counters.buckets[bisect.bisect_left(_BUCKETS_US, total_us)] += 1
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
                        "latency_us_total": c.latency_total_us,
                        "latency_buckets": list(c.buckets),
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


class _Collector:
    """Prometheus metrics from a :class:`Metrics` snapshot, taken at each scrape."""

    def __init__(self, metrics: Metrics, ready: Any) -> None:
        self.metrics = metrics
        self.ready = ready

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        snap = self.metrics.snapshot()
        up = GaugeMetricFamily("splitpipe_server_ready", "1 while the server accepts requests")
        up.add_metric([], 1.0 if self.ready() else 0.0)
        yield up
        families = {
            "requests": CounterMetricFamily("splitpipe_requests", "requests answered", labels=["model"]),
            "failures": CounterMetricFamily(
                "splitpipe_request_failures", "requests refused or failed", labels=["model"]
            ),
            "batches": CounterMetricFamily("splitpipe_tail_batches", "tail runs", labels=["model"]),
            "rows": CounterMetricFamily("splitpipe_tail_rows", "rows over all tail runs", labels=["model"]),
        }
        tail = CounterMetricFamily("splitpipe_tail_seconds", "time in tail runs (measured)", labels=["model"])
        latency = HistogramMetricFamily(
            "splitpipe_request_duration_seconds",
            "server latency per request, received to response ready (measured)",
            labels=["model"],
        )
        for name, m in snap["models"].items():
            for key, family in families.items():
                family.add_metric([name], m[key])
            tail.add_metric([name], m["tail_us_total"] / 1e6)
            cumulative, buckets = 0, []
            for bound, count in zip([*LATENCY_BUCKETS_S, float("inf")], m["latency_buckets"], strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            latency.add_metric([name], buckets, m["latency_us_total"] / 1e6)
        yield from families.values()
        yield tail
        yield latency
        codes = CounterMetricFamily(
            "splitpipe_failures_by_code", "failed requests by gRPC status", labels=["code"]
        )
        for code, count in snap["failures_by_code"].items():
            codes.add_metric([code], count)
        yield codes


def start_exporter(metrics: Metrics, host: str, port: int, ready: Any) -> tuple[Any, int]:
    """Serve ``metrics`` on ``http://host:port/metrics`` for Prometheus (a thread); returns the
    HTTP server (``shutdown()`` it) and its port (``port`` 0 picks a free one)."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(_Collector(metrics, ready))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, int(server.server_port)
