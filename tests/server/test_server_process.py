"""`splitpipe serve` as a real process: startup line, bad arguments, graceful shutdown on signals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.utils import InferenceServerException

from tests.server import tiny_tails

SERVE = [sys.executable, "-m", "splitpipe", "serve"]
_LISTENING = re.compile(r"listening on [\d.]+:(\d+)")


def _start(args: list[str]) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "SPLITPIPE_LOG_LEVEL": "INFO"}
    proc = subprocess.Popen(
        [*SERVE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the server is up (or the process died)
    match = _LISTENING.search(line)
    if not match:
        proc.kill()
        _, err = proc.communicate(timeout=30)
        pytest.fail(f"server did not start: {line!r} {err[-2000:]}")
    return proc, int(match.group(1))


@pytest.fixture
def export(tmp_path: Path) -> Path:
    return tiny_tails.relu_mean(tmp_path / "relu-mean")


@pytest.fixture
def stop_later() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_requests_in_flight_then_exits_0(
    export: Path, stop_later: list[subprocess.Popen[str]], sig: signal.Signals
) -> None:
    # A batch window of 1.5 s keeps the requests queued inside the server when the signal lands.
    proc, port = _start(
        [
            str(export),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--max-batch",
            "64",
            "--batch-timeout-us",
            "1500000",
        ]
    )
    stop_later.append(proc)
    client = tc.InferenceServerClient(f"127.0.0.1:{port}")
    assert client.is_server_ready()
    results: dict[int, Any] = {}
    done = threading.Event()
    xs = {i: np.full((1, 4, 3, 3), i - 2.5, np.float32) for i in range(6)}

    def callback(index: int, result: Any, error: Any) -> None:
        results[index] = (result, error)
        if len(results) == len(xs):
            done.set()

    sent_at = time.monotonic()
    for i, x in xs.items():
        tensor = tc.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        client.async_infer(
            "relu-mean", [tensor], callback=lambda result, error, i=i: callback(i, result, error)
        )
    time.sleep(0.4)
    assert not done.is_set(), "requests finished before the signal; the test would prove nothing"
    proc.send_signal(sig)
    assert done.wait(30), "requests in flight were not answered"
    assert time.monotonic() - sent_at >= 1.0  # they were answered by the batch, not cut short
    for i, (result, error) in results.items():
        assert error is None, error
        want = tiny_tails.run_tail(export, {"x": xs[i]})
        np.testing.assert_array_equal(result.as_numpy("mean"), want["mean"])
        assert result.get_response().parameters["batch_size"].int64_param == len(xs)
    assert proc.wait(timeout=30) == 0
    _, err = proc.communicate(timeout=30)
    assert "shutting down" in err and "Traceback" not in err
    with pytest.raises(InferenceServerException):
        client.is_server_live()
    client.close()


def test_bad_export_dir_is_one_line_and_exit_2(tmp_path: Path) -> None:
    probe = subprocess.run([*SERVE, str(tmp_path / "missing")], capture_output=True, text=True, timeout=120)
    assert probe.returncode == 2
    assert probe.stderr.strip().splitlines() == [
        f"splitpipe serve: error: export directory not found: {tmp_path / 'missing'}"
    ]
    (tmp_path / "manifest.json").write_text("{}")  # the manifest given instead of its folder
    probe = subprocess.run(
        [*SERVE, str(tmp_path / "manifest.json")], capture_output=True, text=True, timeout=120
    )
    assert probe.returncode == 2
    assert probe.stderr.strip().splitlines() == [
        f"splitpipe serve: error: {tmp_path / 'manifest.json'} is a file; give the export directory "
        "that holds manifest.json"
    ]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--runtime", "torch"], "--runtime 'torch' cannot run an export's ONNX files; accepted: ort, trt"),
        (["--runtime", "trt", "--ray"], "--ray runs the tails on Ray Serve replicas with ONNX Runtime"),
    ],
)
def test_runtimes_that_cannot_serve_are_one_line(export: Path, flags: list[str], message: str) -> None:
    probe = subprocess.run(
        [*SERVE, str(export), "--port", "0", *flags], capture_output=True, text=True, timeout=120
    )
    assert probe.returncode == 2
    lines = probe.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], probe.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-tensor-mb", "-1"], "--max-tensor-mb must be at least 1, got -1"),
        (["--max-tensor-mb", "0"], "--max-tensor-mb must be at least 1, got 0"),
        (["--max-message-mb", "-3"], "--max-message-mb must be at least 1, got -3"),
        (["--max-message-mb", "2048"], "--max-message-mb must be at most 2047 (gRPC's limit"),
        (["--max-batch", "0"], "--max-batch must be at least 1, got 0"),
        (["--instances", "-1"], "--instances must be at least 1, got -1"),
        (["--grace", "nan"], "--grace must be a number of seconds >= 0, got nan"),
        # a wait that long killed the tail's thread (OverflowError) and hung every request
        (["--batch-timeout-us", str(10**18)], "--batch-timeout-us must be at most 60000000 (a minute)"),
        (["--log-interval", "nan"], "--log-interval must be a number of seconds >= 0, got nan"),
        (["--host", ""], "--host must be an address or name of this machine"),
        (["--host", "127.0.0.1:8001"], "--host must be an address or name of this machine"),
        (["--host", "http://edge"], "--host must be an address or name of this machine"),
    ],
)
def test_bad_sizes_and_counts_name_the_flag_and_value_given(
    export: Path, flags: list[str], message: str
) -> None:
    probe = subprocess.run(
        [*SERVE, str(export), "--port", "0", *flags], capture_output=True, text=True, timeout=120
    )
    assert probe.returncode == 2
    lines = probe.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"splitpipe serve: error: {message}"), probe.stderr


def test_changed_tail_is_refused(export: Path) -> None:
    with (export / "tail.onnx").open("ab") as f:
        f.write(b"\0")
    probe = subprocess.run([*SERVE, str(export), "--port", "0"], capture_output=True, text=True, timeout=120)
    assert probe.returncode == 2
    assert "sha256" in probe.stderr and "changed after export" in probe.stderr
    assert "Traceback" not in probe.stderr


def test_busy_port_is_refused(export: Path, stop_later: list[subprocess.Popen[str]]) -> None:
    proc, port = _start([str(export), "--host", "127.0.0.1", "--port", "0"])
    stop_later.append(proc)
    probe = subprocess.run(
        [*SERVE, str(export), "--host", "127.0.0.1", "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 2
    lines = probe.stderr.strip().splitlines()
    assert (
        lines[-1]
        == f"splitpipe serve: error: cannot listen on 127.0.0.1:{port}: port {port} is already in use"
    )
    assert not any("Failed to" in line or "add_port" in line for line in lines), probe.stderr  # gRPC's
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("nosuchhost.invalid", "cannot resolve 'nosuchhost.invalid'"),
        ("192.0.2.1", "assign requested address"),
    ],
)
def test_address_not_of_this_host_is_one_line(export: Path, host: str, reason: str) -> None:
    probe = subprocess.run(
        [*SERVE, str(export), "--host", host, "--port", "0"], capture_output=True, text=True, timeout=120
    )
    assert probe.returncode == 2
    last = probe.stderr.strip().splitlines()[-1]
    assert last.startswith(f"splitpipe serve: error: cannot listen on {host}:0: ") and reason in last, last
    assert "Failed to bind" not in probe.stderr


def test_an_ipv6_host_is_bracketed_in_the_startup_line(
    export: Path, stop_later: list[subprocess.Popen[str]]
) -> None:
    import socket

    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    proc = subprocess.Popen(
        [*SERVE, str(export), "--host", "::1", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    stop_later.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"listening on \[::1\]:(\d+)", line)
    assert match, line
    client = tc.InferenceServerClient(f"[::1]:{match.group(1)}")
    assert client.is_server_ready()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
