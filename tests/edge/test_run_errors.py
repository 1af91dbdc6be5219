"""Runs that meet bad input part-way: an image that does not decode is skipped and counted, and a
run that ends with an error still writes the report of the frames it did."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from splitpipe import cli
from splitpipe.edge import (
    Agent,
    AgentOptions,
    ClientOptions,
    SourceSpec,
    SyntheticSource,
    load_export,
    run_agent,
)
from splitpipe.edge.sources import Feed
from splitpipe.errors import SplitpipeError
from splitpipe.server import ServerThread
from tests.edge.conftest import REPO, Exports, ServeProcess, env, free_port


def _images(folder: Path, names: list[str], corrupt: set[str]) -> Path:
    from PIL import Image

    folder.mkdir()
    for i, name in enumerate(names):
        Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(folder / name)
        if name in corrupt:  # cut short: Pillow opens it, decoding fails ("Truncated File Read")
            data = (folder / name).read_bytes()
            (folder / name).write_bytes(data[: len(data) // 2])
    return folder


def test_an_unreadable_image_is_skipped_with_one_warning_and_counted(
    exports: Exports, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    folder = _images(tmp_path / "images", ["a.png", "b.png", "z.png", "c.png"], {"b.png"})
    report = tmp_path / "r.json"
    args = ["agent", str(exports.local), "--source", "images", str(folder), "--log-interval", "0"]
    assert cli.main([*args, "--report", str(report)]) == 0
    out = capsys.readouterr().out
    warned = [r.getMessage() for r in caplog.records if "skipping image" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(
        f"skipping image {folder / 'b.png'}: cannot read it ("
    ), warned
    assert "3 frames in" in out and "; 1 unreadable input(s) skipped" in out
    s = json.loads(report.read_text())["summary"]
    assert (s["captured"], s["completed"], s["unreadable_inputs"]) == (3, 3, 1)


def test_a_looping_folder_warns_once_per_unreadable_image(
    exports: Exports, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _images(tmp_path / "images", ["a.png", "b.png", "c.png"], {"b.png"})
    with caplog.at_level(logging.WARNING, "splitpipe.edge.sources"):
        report = run_agent(
            AgentOptions(
                exports.local, source=SourceSpec("images", str(folder), loop=True), frames=8, log_interval_s=0
            )
        )
    s = report.summary
    assert (s["completed"], s["unreadable_inputs"]) == (8, 4)
    assert len([r for r in caplog.records if "skipping image" in r.getMessage()]) == 1


def test_a_folder_of_which_no_image_reads_is_one_line(
    exports: Exports, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _images(tmp_path / "images", ["a.png", "b.png"], {"a.png", "b.png"})
    for loop in ([], ["--loop"]):
        args = ["agent", str(exports.local), "--source", "images", str(folder), "--log-interval", "0", *loop]
        assert cli.main(args) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if "splitpipe agent: error" in line]
        assert len(err) == 1 and f"none of the 2 image files in {folder} can be read (e.g. a.png: " in err[0]


class _Failing(SyntheticSource):
    """Synthetic frames, then an error at frame ``at`` (a camera that stopped, say)."""

    def __init__(self, exports: Exports, at: int) -> None:
        super().__init__(load_export(exports.raw).inputs)
        self.at = at
        self.reads = 0

    def read(self) -> Feed:
        if self.reads == self.at:
            raise SplitpipeError("camera 0 stopped delivering frames")
        self.reads += 1
        return super().read()


@pytest.mark.parametrize("head_thread", [True, False])
def test_a_run_that_fails_part_way_drains_and_writes_its_report(
    exports: Exports, server: ServerThread, tmp_path: Path, head_thread: bool
) -> None:
    report = tmp_path / "r.json"
    options = AgentOptions(
        exports.raw,
        server=f"127.0.0.1:{server.port}",
        log_interval_s=0,
        report=report,
        head_thread=head_thread,
        client=ClientOptions(window=8),
    )
    agent = Agent(options, source=_Failing(exports, at=50))
    with pytest.raises(SplitpipeError, match="camera 0 stopped delivering frames"):
        asyncio.run(agent.run())
    s = json.loads(report.read_text())["summary"]
    # the frames in flight when the source failed were answered, not lost
    assert (s["captured"], s["completed"], s["failed"], s["lost"]) == (50, 50, 0, 0)


def _agent_until_the_server_fails(
    exports: Exports, tmp_path: Path, fail: Callable[[subprocess.Popen[str]], None]
) -> tuple[int, str, str, dict[str, Any]]:
    """``splitpipe agent`` streaming to ``splitpipe serve``; once frames flow, ``fail(serve)``,
    half a second later SIGTERM to the agent: its exit code, stdout, stderr and report."""
    port = free_port()
    serve = ServeProcess([exports.raw], port).start()
    report = tmp_path / "r.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "splitpipe", "agent", str(exports.raw), "--server", f"127.0.0.1:{port}",
         "--fps", "200", "--log-interval", "0.3", "--drain-timeout", "0.5", "--report", str(report)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO,
    )  # fmt: skip
    assert proc.stderr is not None and serve.proc is not None
    try:
        for line in proc.stderr:  # frames are flowing
            if " fps, e2e p50 " in line:
                break
        fail(serve.proc)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if serve.proc.poll() is None:
            serve.proc.send_signal(signal.SIGCONT)  # a stopped server can stop
        serve.stop()
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, stdout, stderr, json.loads(report.read_text())


def test_frames_lost_at_the_end_make_a_non_zero_exit(exports: Exports, tmp_path: Path) -> None:
    # the server is killed and never comes back: the frames captured from then on get no reply
    code, stdout, stderr, data = _agent_until_the_server_fails(exports, tmp_path, lambda p: p.kill())
    lost = data["summary"]["lost"]
    assert lost >= 1 and code == 1, stderr
    assert f"splitpipe agent: {lost} frame(s) lost: no reply before the end" in stderr
    assert f"{lost} lost" in stdout


def test_bytes_per_frame_cover_every_frame_and_remote_frames_have_their_own() -> None:
    from splitpipe.edge.report import FrameRecord, Report

    frames = []
    for i, (path, tx) in enumerate([("local", 0), ("local", 0), ("local", 0), ("remote", 1000)]):
        r = FrameRecord(i, path, float(i), tx_bytes=tx, payload_bytes=tx // 2, e2e_ms=1.0, done=i + 0.5)
        r.split = "tiny-local" if path == "local" else "tiny-raw"
        frames.append(r)
    counts = {"captured": 4, "completed": 4, "failed": 0, "lost": 0, "resent": 0, "reconnects": 0}
    energy = {"joules": None}
    adaptive = Report(frames, {"path": "adaptive"}, counts, energy, 0.0, 4.0)
    s = adaptive.summary
    assert (s["bytes_per_frame"], s["payload_bytes_per_frame"], s["bytes_per_remote_frame"]) == (
        250,
        125,
        1000,
    )
    assert s["latency"]["e2e_ms"]["n"] == 4  # the same frames as the bytes
    assert "bytes per frame: 250 (payload 125); 1,000 per remote frame" in adaptive.lines()
    local = Report(frames[:3], {"path": "local"}, counts, energy, 0.0, 4.0).summary
    assert (local["bytes_per_frame"], local["bytes_per_remote_frame"]) == (0, None)
    assert np.isclose(
        Report(frames[3:], {"path": "remote"}, counts, energy, 0, 4).summary["bytes_per_frame"], 1000
    )


def test_frames_lost_to_a_hung_server_say_they_were_sent(exports: Exports, tmp_path: Path) -> None:
    """A server that stops answering (SIGSTOP: the connection stays up) keeps the window's frames
    unanswered; at the end they are lost, and the report says each was sent once."""
    code, _, stderr, data = _agent_until_the_server_fails(
        exports, tmp_path, lambda p: p.send_signal(signal.SIGSTOP)
    )
    lost = [f for f in data["frames"] if f["e2e_ms"] is None]
    assert code == 1 and len(lost) == data["summary"]["lost"] >= 4, stderr
    sent = [f for f in lost if f["sends"] == 1]
    assert len(sent) == 4 and all(f["sends"] in (0, 1) for f in lost)  # the window: 4 were sent
    unsent = len(lost) - len(sent)
    more = f", {unsent} more captured and never sent" if unsent else ""
    assert f"4 frame(s) got no reply before shutdown{more}; reported lost" in stderr, stderr
