"""The measurement probes: the rate estimator (pure function) and the link probe's errors."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from splitpipe.testbed.probe import goodput_mbit


def test_goodput_is_the_slope_after_warmup() -> None:
    # 1.25 MB/s = 10 Mbit/s, after a 64 KiB burst at time 0 that the warm-up must ignore
    samples = [(0.0, 65536)] + [(0.01 * i, 65536 + 12_500 * i) for i in range(1, 101)]
    assert goodput_mbit(samples) == pytest.approx(10.0, rel=1e-3)


def test_goodput_needs_samples() -> None:
    with pytest.raises(ValueError, match="too few samples"):
        goodput_mbit([(0.0, 1)])


def test_link_probe_names_the_phase_that_failed() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    args = [
        "link",
        "--connect",
        f"127.0.0.1:{port}",
        "--rtt-count",
        "2",
        "--uplink-s",
        "0",
        "--downlink-s",
        "0",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "splitpipe.testbed.probe", *args], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("rtt_ms failed after ") and "ConnectionRefusedError" in proc.stderr
    assert proc.stderr.count("\n") == 1
