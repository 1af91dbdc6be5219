"""The Prometheus exporter of `splitpipe serve --metrics-port`: scraped over real HTTP while
tritonclient sends requests, parsed with prometheus_client's own parser."""

from __future__ import annotations

import itertools
import socket
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from splitpipe.errors import SplitpipeError
from splitpipe.server import ServerOptions, ServerThread
from tests.server.tiny_tails import relu_mean

parser = pytest.importorskip("prometheus_client.parser")
tc = pytest.importorskip("tritonclient.grpc")


def _scrape(port: int) -> dict[str, Any]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples: dict[str, Any] = {}
    for family in parser.text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + "".join(f"|{k}={v}" for k, v in sorted(s.labels.items()))
            samples[key] = s.value
    return samples


def test_counts_and_latency_histogram(tmp_path: Path) -> None:
    export = relu_mean(tmp_path / "export")
    with ServerThread([export], ServerOptions(metrics_port=0)) as running:
        assert running.server is not None and running.server.metrics_port
        port = running.server.metrics_port
        assert _scrape(port)["splitpipe_server_ready"] == 1.0
        with tc.InferenceServerClient(f"127.0.0.1:{running.port}") as client:
            x = np.ones((1, 4, 3, 3), np.float32)
            tensor = tc.InferInput("x", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x)
            for _ in range(25):
                client.infer("relu-mean", [tensor])
            bad = tc.InferInput("x", [1, 5, 3, 3], "FP32")
            bad.set_data_from_numpy(np.ones((1, 5, 3, 3), np.float32))
            with pytest.raises(Exception, match="shape"):
                client.infer("relu-mean", [bad])
        m = _scrape(port)
    assert m["splitpipe_requests_total|model=relu-mean"] == 25
    assert m["splitpipe_request_failures_total|model=relu-mean"] == 1
    assert m["splitpipe_failures_by_code_total|code=INVALID_ARGUMENT"] == 1
    assert m["splitpipe_tail_batches_total|model=relu-mean"] == 25
    assert m["splitpipe_request_duration_seconds_count|model=relu-mean"] == 25
    assert m["splitpipe_request_duration_seconds_bucket|le=+Inf|model=relu-mean"] == 25
    assert 0 < m["splitpipe_request_duration_seconds_sum|model=relu-mean"] < 25 * 1.0
    buckets = sorted(
        (float(k.split("le=")[1].split("|")[0]), v)
        for k, v in m.items()
        if k.startswith("splitpipe_request_duration_seconds_bucket")
    )
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(buckets))  # cumulative
    with pytest.raises(OSError):  # the exporter stopped with the server
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    export = relu_mean(tmp_path / "export")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SplitpipeError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            ServerThread([export], ServerOptions(metrics_port=port)).start()
