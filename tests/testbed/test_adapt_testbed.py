"""The adaptive agent on the real testbed: the link rate changes under it and it follows.

resnet18 is exported as ``offload`` (int8 input, about 150 KB a frame) and ``local``; the device
gets a quarter of a core, so the whole model there takes about 150 ms while offloading at
200 Mbit/s takes about 50 ms, and at 1 Mbit/s over a second. About a minute.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from splitpipe.testbed import Testbed, TestbedOptions

pytestmark = [pytest.mark.testbed, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PORT = 8001


def _env() -> dict[str, str]:
    return {**os.environ, "SPLITPIPE_LOG_LEVEL": "WARNING", "PYTHONPATH": str(REPO)}


def test_agent_follows_the_link_rate(tmp_path: Path) -> None:
    from splitpipe.partition.export import export_split
    from splitpipe.partition.plan import PlanRequest, analyse, make_plan

    req = PlanRequest(model="torchvision:resnet18", codec="int8", link="200mbit,4ms", profile_mode="analytic")
    analysis = analyse(req)
    plan = make_plan(req, analysis=analysis)
    offload, local = (
        export_split(
            req, split, tmp_path / split, plan=plan, analysis=analysis, codec=codec, name=f"r18-{split}"
        ).out
        for split, codec in (("offload", "int8"), ("local", None))
    )
    tb = Testbed(TestbedOptions(name=f"ad{os.getpid() % 100_000}", rate_mbit=200, rtt_ms=4, device_cpu=0.25))
    tb.up(measure=False)
    try:
        serve = tb.popen(
            "server",
            [sys.executable, "-m", "splitpipe", "serve", str(offload), "--host",
             tb.server_listen_address(PORT).rpartition(":")[0], "--port", str(PORT), "--log-interval", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_env(), text=True,
        )  # fmt: skip
        assert serve.stdout is not None
        assert "listening on" in serve.stdout.readline()
        report = tmp_path / "report.json"
        agent = tb.popen(
            "device",
            [sys.executable, "-m", "splitpipe", "agent", str(offload), str(local), "--server",
             tb.server_address(PORT), "--fps", "6", "--report", str(report), "--log-interval", "0",
             "--connect-timeout", "60", "--drain-timeout", "60"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(), text=True,
        )  # fmt: skip
        time.sleep(3)
        changes = []
        for i, (rate, seconds) in enumerate([(200, 12), (1, 14), (200, 14)]):
            if i:
                tb.set_rate(rate, measure=False)
            changes.append(time.perf_counter())
            time.sleep(seconds)
        changes.append(time.perf_counter())
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=120)
        assert agent.returncode == 0, err
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=30)
    finally:
        tb.down()

    data = json.loads(report.read_text())
    assert data["summary"]["lost"] == 0 and data["summary"]["failed"] == 0
    frames = data["frames"]
    for phase, want in enumerate(["r18-offload", "r18-local", "r18-offload"]):
        # the second half of each phase: the agent has had 6 s or more to notice the change
        start, end = (changes[phase] + changes[phase + 1]) / 2, changes[phase + 1]
        splits = [f["split"] for f in frames if start <= f["captured_s"] < end]
        why = (phase, len(splits), data["adapt"]["switches"], data["adapt"]["options"])
        assert len(splits) >= 5, why
        assert splits.count(want) / len(splits) >= 0.75, why
    assert data["adapt"]["switch_count"] >= 2
