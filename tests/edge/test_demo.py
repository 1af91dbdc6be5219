"""`splitpipe demo` end to end (plan, export, serve, stream) on the small test model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.edge.conftest import REPO, env


def test_demo_runs_the_whole_flow_and_prints_measured_figures(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "splitpipe", "demo", "--model", "tests.fixtures.models:tiny_net",
         "--input-shape", "1,3,32,32", "--frames", "40", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env(), cwd=REPO, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for text in ("[5/5] streaming 40 frames", "split ", "local (all on device)", "offload (send input)",
                 "not the planned 20 Mbit/s", "ESTIMATED", "whole demo"):  # fmt: skip
        assert text in out, text
    for key in ("split", "local", "offload"):
        report = json.loads((tmp_path / f"report-{key}.json").read_text())
        s = report["summary"]
        assert (s["completed"], s["lost"], s["failed"]) == (40, 0, 0)
        assert report["path"] == ("local" if key == "local" else "remote")
    assert (tmp_path / "split" / "manifest.json").is_file() and not (
        tmp_path / "local" / "tail.onnx"
    ).exists()


def test_demo_out_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    afile = tmp_path / "notes.txt"
    afile.write_text("keep")
    done = subprocess.run(
        [sys.executable, "-m", "splitpipe", "demo", "--out", str(afile)],
        capture_output=True, text=True, env=env(), cwd=REPO, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == f"splitpipe demo: error: --out {afile} is a file; give a directory for the exports and reports"
    )
    assert afile.read_text() == "keep"


def test_sigterm_stops_the_demo_and_the_server_it_started(tmp_path: Path) -> None:
    import signal
    import time

    import psutil

    demo = subprocess.Popen(
        [sys.executable, "-m", "splitpipe", "demo", "--model", "tests.fixtures.models:tiny_net",
         "--input-shape", "1,3,32,32", "--frames", "1000000", "--out", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO,
    )  # fmt: skip
    assert demo.stdout is not None
    for line in demo.stdout:  # the server is up once the agent streams
        if line.startswith("[5/5]"):
            break
    time.sleep(1.0)
    children = psutil.Process(demo.pid).children(recursive=True)
    assert any("serve" in " ".join(c.cmdline()) for c in children)
    demo.send_signal(signal.SIGTERM)
    assert demo.wait(timeout=60) == 143
    assert demo.stderr is not None and "terminated" in demo.stderr.read()
    deadline = time.monotonic() + 30
    while any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children):
        assert time.monotonic() < deadline, [c.cmdline() for c in children if c.is_running()]
        time.sleep(0.1)


@pytest.mark.skipif(not Path("/proc/version").is_file(), reason="needs Linux's /proc")
def test_demo_out_where_nothing_can_be_written_is_one_line() -> None:
    # /proc refuses new folders, whatever the permission bits say (root ignores them)
    done = subprocess.run(
        [sys.executable, "-m", "splitpipe", "demo", "--out", "/proc/splitpipe-demo-test"],
        capture_output=True, text=True, env=env(), cwd=REPO, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().startswith(
        "splitpipe demo: error: --out /proc/splitpipe-demo-test: cannot write in /proc"
    ), done.stderr
