"""What users hit on the real testbed (root only; skipped elsewhere): crashes and odd values."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from splitpipe.errors import SplitpipeError
from splitpipe.testbed import Testbed, TestbedOptions
from splitpipe.testbed.link import pids

pytestmark = pytest.mark.testbed

_RUN = f"u{os.getpid() % 100_000}"


@pytest.fixture
def bed() -> Iterator[Testbed]:
    tb = Testbed(TestbedOptions(name=f"{_RUN}k", rate_mbit=10, rtt_ms=10))
    try:
        tb.up(measure=False)
        yield tb
    finally:
        tb.down()
        assert not tb.names.state_dir.exists()


def test_a_probe_server_left_by_a_killed_measurement_does_not_block_the_next(bed: Testbed) -> None:
    """`kill -9` of `testbed up` (or `set`, `measure`) while it measures leaves its probe
    server on the server side, holding the probe port; the next measurement used to fail
    twice with "the measurement probe server exited with code 1 before it was ready"."""
    port = bed.options.probe_port
    ready = bed.names.state_dir / "orphan.ready"
    argv = [sys.executable, "-m", "splitpipe.testbed.probe", "serve", "--port", str(port)]
    orphan = subprocess.Popen(
        bed.command("server", [*argv, "--ready-file", str(ready)]), start_new_session=True
    )
    deadline = time.monotonic() + 10
    while not ready.exists():
        assert orphan.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    result = bed.measure(rate=False, cpu=False)
    assert result.rtt_ms is not None and result.rtt_ms >= 10
    assert orphan.wait(timeout=5) != 0  # stopped by the measurement
    assert orphan.pid not in pids(bed.names.server_ns)


def test_the_slowest_accepted_link_is_measured_and_a_slower_one_refused() -> None:
    """`set --rate 0.01` used to be accepted and then fail every measurement ("too few samples
    to estimate a rate"), leaving the testbed unmeasured; 50 kbit/s is the floor now."""
    with pytest.raises(
        SplitpipeError, match=r"link rate 0.01 Mbit/s is out of range; accepted: 0.05 to 10000"
    ):
        TestbedOptions(rate_mbit=0.01)
    done = subprocess.run(
        [sys.executable, "-m", "splitpipe", "testbed", "up", "--name", f"{_RUN}none", "--rate", "10kbit"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "accepted: 0.05 to 10000" in done.stderr.strip().splitlines()[-1]
    tb = Testbed(TestbedOptions(name=f"{_RUN}s", rate_mbit=10, rtt_ms=10, device_cpu=0.5))
    try:
        tb.up(measure=False)
        m = tb.set_rate(0.05)
        assert m is not None and m.uplink_mbit is not None and m.downlink_mbit is not None
        assert 0.03 <= m.uplink_mbit <= 0.052 and 0.03 <= m.downlink_mbit <= 0.052, m
    finally:
        tb.down()
        assert not tb.names.state_dir.exists()
