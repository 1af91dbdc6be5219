"""Daemon behaviour: waiting for the server, surviving a server restart, draining on SIGTERM,
the report file, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from splitpipe import cli
from splitpipe.edge import (
    AgentOptions,
    ClientOptions,
    FrameResult,
    Report,
    SyntheticSource,
    agent_thread,
    load_export,
    run_agent,
)
from splitpipe.server import ServerThread
from tests.edge.conftest import REPO, Exports, ServeProcess, env, free_port, wait_for

FRAME_KEYS = {
    "id",
    "path",
    "e2e_ms",
    "head_ms",
    "encode_ms",
    "rtt_ms",
    "server",
    "tx_bytes",
    "energy_mj",
    "energy_source",
}


def _agent_in_thread(options: AgentOptions, results: dict[int, Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def on_result(result: FrameResult) -> None:
        results[result.record.id] = {k: v.copy() for k, v in result.outputs.items()}

    def main() -> None:
        try:
            out.append(run_agent(options, on_result))
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    return thread, out


def _check_outputs(exports: Exports, export_dir: Path, results: dict[int, Any]) -> None:
    source = SyntheticSource(load_export(export_dir).inputs, seed=0)
    refs = [exports.reference(source.frame(i)) for i in range(source.pool_size)]
    for i, got in results.items():
        for name, want in refs[i % len(refs)].items():
            np.testing.assert_allclose(got[name], want, rtol=1e-6, atol=1e-6)


def test_waits_for_a_server_that_starts_later(exports: Exports) -> None:
    port = free_port()
    results: dict[int, Any] = {}
    options = AgentOptions(
        exports.raw,
        server=f"127.0.0.1:{port}",
        frames=200,
        client=ClientOptions(backoff_initial_s=0.05, backoff_max_s=0.2),
        log_interval_s=0,
    )
    thread, out = _agent_in_thread(options, results)
    thread.join(1.0)
    assert thread.is_alive()  # retrying: nobody listens yet
    serve = ServeProcess([exports.raw], port).start()
    try:
        thread.join(60)
    finally:
        serve.stop()
    report = out[0]
    assert isinstance(report, Report), report
    s = report.summary
    assert (s["completed"], s["lost"], s["failed"]) == (200, 0, 0)
    assert sorted(results) == list(range(200))
    _check_outputs(exports, exports.raw, results)


def test_server_killed_and_restarted_mid_stream_loses_no_frame(exports: Exports) -> None:
    port = free_port()
    serve = ServeProcess([exports.raw], port).start()
    results: dict[int, Any] = {}
    options = AgentOptions(
        exports.raw,
        server=f"127.0.0.1:{port}",
        frames=1200,
        client=ClientOptions(window=8, backoff_initial_s=0.05, backoff_max_s=0.5),
        log_interval_s=0,
        head_thread=True,
    )
    thread, out = _agent_in_thread(options, results)
    try:
        wait_for(lambda: len(results) >= 300 or not thread.is_alive(), what="300 frames")
        serve.kill()  # SIGKILL: the replies of the frames in flight are lost with it
        killed_at = len(results)
        serve.start()  # same port
        thread.join(90)
    finally:
        serve.stop()
    report = out[0]
    assert isinstance(report, Report), report
    s = report.summary
    assert killed_at < 1200
    assert (s["captured"], s["completed"], s["lost"], s["failed"]) == (1200, 1200, 0, 0)
    assert s["reconnects"] >= 1 and s["resent"] >= 1
    assert sorted(results) == list(range(1200))
    assert max(r.sends for r in report.frames) >= 2
    _check_outputs(exports, exports.raw, results)


def test_sigterm_drains_and_exits_0_without_torch(
    exports: Exports, server: ServerThread, tmp_path: Path
) -> None:
    """The agent as a device runs it (no torch, onnx, Pillow, zstd...): until SIGTERM, then drain."""
    report_path = tmp_path / "report.json"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "edge" / "blocked_agent.py"), str(exports.int8),
         "--server", f"127.0.0.1:{server.port}", "--fps", "200", "--window", "4",
         "--log-interval", "0.3", "--report", str(report_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=REPO,
    )  # fmt: skip
    assert proc.stderr is not None
    lines = []
    try:
        for line in proc.stderr:  # wait for two interval log lines: frames are flowing
            lines.append(line)
            if sum(" fps" in x for x in lines) >= 2:
                break
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, "".join(lines) + stderr
    assert "finishing frames in flight" in stderr
    assert " fps, e2e p50 " in lines[-1] and lines[-1].rstrip().endswith("(measured)")
    assert "frames in" in stdout and "0 lost" in stdout

    data = json.loads(report_path.read_text())
    s = data["summary"]
    assert s["lost"] == 0 and s["failed"] == 0 and s["completed"] == s["captured"] > 0
    assert len(data["frames"]) == s["captured"]
    for frame in data["frames"]:
        assert frame.keys() >= FRAME_KEYS
        assert frame["path"] == "remote" and frame["energy_source"] == "estimated"
        assert frame["e2e_ms"] >= frame["rtt_ms"] > 0 and frame["tx_bytes"] > frame["payload_bytes"] == 2048
        assert {"queue_us", "decode_us", "tail_us", "batch_size", "total_us"} <= frame["server"].keys()
    assert data["codec"] == "int8" and data["path"] == "remote"
    for key in (
        "e2e_ms",
        "head_ms",
        "encode_ms",
        "rtt_ms",
        "network_ms",
        "server_tail_ms",
        "server_total_ms",
    ):
        assert {"p50", "p90", "p99"} <= s["latency"][key].keys(), key
    assert s["fps"] > 0 and s["achieved_fraction"] > 0 and s["bound"]["stage"] in ("device", "server")
    assert s["bytes_per_frame"] > 2048
    # no sensor here: the energy is an estimate and says so, never "measured"
    assert s["energy"]["energy_source"] == "estimated" and s["energy"]["source"].startswith("estimated")
    shares = sum(f["energy_mj"] or 0 for f in data["frames"])
    assert 0 < shares <= s["energy"]["joules"] * 1e3 * 1.0001


def _run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(args)
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if "splitpipe agent: error" in x]
    return code, lines[0] if lines else err


@pytest.fixture
def tampered(exports: Exports, tmp_path: Path) -> Path:
    copy = tmp_path / "tampered"
    shutil.copytree(exports.raw, copy)
    with (copy / "head.onnx").open("ab") as f:
        f.write(b"\0")
    return copy


def test_bad_input_gives_one_line_and_exit_2(
    exports: Exports, server: ServerThread, tampered: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{server.port}"
    renamed = tmp_path / "renamed"
    shutil.copytree(exports.raw, renamed)
    manifest = json.loads((renamed / "manifest.json").read_text())
    manifest["name"] = "not-served"
    (renamed / "manifest.json").write_text(json.dumps(manifest))
    unchecked = {}  # manifests whose values once gave tracebacks
    for key, change in (
        ("predictions", lambda m: m.update(predictions="fast")),
        ("shape", lambda m: m["inputs"][0].update(shape=[1, 3, -5, 64])),
    ):
        unchecked[key] = Path(shutil.copytree(exports.raw, tmp_path / key))
        manifest = json.loads((unchecked[key] / "manifest.json").read_text())
        change(manifest)
        (unchecked[key] / "manifest.json").write_text(json.dumps(manifest))
    cases = {
        "export directory not found": ["agent", str(tmp_path / "missing"), "--server", address],
        "is a file; give the export directory that holds manifest.json": [
            "agent", str(exports.raw / "manifest.json"), "--server", address,
        ],
        "sha256": ["agent", str(tampered), "--server", address],
        "unknown source 'webcam'; accepted: synthetic, images DIR, video FILE, camera N": [
            "agent", str(exports.raw), "--server", address, "--source", "webcam",
        ],
        "source images needs DIR": ["agent", str(exports.local), "--source", "images"],
        "images directory not found": ["agent", str(exports.local), "--source", "images", str(tmp_path / "none")],
        "source images takes a folder of pictures; ": [
            "agent", str(exports.local), "--source", "images", str(exports.local / "manifest.json"),
        ],
        "give --server HOST:PORT": ["agent", str(exports.raw)],
        "HOST:PORT": ["agent", str(exports.raw), "--server", "localhost"],
        "unknown model 'not-served'": ["agent", str(renamed), "--server", address],
        "did not answer within 0.5 s": [
            "agent", str(exports.raw), "--server", f"127.0.0.1:{free_port()}", "--connect-timeout", "0.5",
        ],
        "--frames must be at least 1": ["agent", str(exports.local), "--frames", "0"],
        "manifest field 'predictions' must be an object or null": [
            "agent", str(unchecked["predictions"]), "--server", address,
        ],
        "manifest field inputs[0].shape must be a list of non-negative integers": [
            "agent", str(unchecked["shape"]), "--server", address,
        ],
        "--seed must be a non-negative integer, got -1": ["agent", str(exports.local), "--seed", "-1"],
        "--runtime 'torch' cannot run an export's ONNX files; accepted: ort, trt": [
            "agent", str(exports.local), "--runtime", "torch",
        ],
        # checked before the run: a report that cannot be written at the end would lose it
        f"--report {tmp_path / 'none' / 'r.json'}: folder {tmp_path / 'none'} does not exist": [
            "agent", str(exports.local), "--report", str(tmp_path / "none" / "r.json"),
        ],
        f"--report {tmp_path} is a directory; give a file name such as {tmp_path / 'report.json'}": [
            "agent", str(exports.local), "--report", str(tmp_path),
        ],
    }  # fmt: skip
    for expected, args in cases.items():
        code, line = _run_cli(args, capsys)
        assert code == 2, (args, line)
        assert line.startswith("splitpipe agent: error: ") and expected in line, (expected, line)
        assert "\n" not in line.strip()


def test_frames_the_server_refuses_count_as_failed_and_the_stream_goes_on(exports: Exports) -> None:
    from splitpipe.server import ServerOptions

    # a server whose tensor limit is below the cut tensor (8 KiB): it answers every frame with an error
    with ServerThread([exports.raw], ServerOptions(max_tensor_bytes=1024)) as refusing:
        report = run_agent(
            AgentOptions(exports.raw, server=f"127.0.0.1:{refusing.port}", frames=30, log_interval_s=0)
        )
    s = report.summary
    assert (s["captured"], s["completed"], s["failed"], s["lost"]) == (30, 0, 30, 0)
    assert all("INVALID_ARGUMENT" in (r.error or "") and "limit" in (r.error or "") for r in report.frames)
    assert report.frames[0].to_json()["error"].startswith("INVALID_ARGUMENT: ")


def test_frames_without_reply_at_shutdown_are_reported_lost(exports: Exports) -> None:
    port = free_port()
    serve = ServeProcess([exports.raw], port).start()
    results: dict[int, Any] = {}
    options = AgentOptions(
        exports.raw,
        server=f"127.0.0.1:{port}",
        client=ClientOptions(window=8, backoff_initial_s=0.05, backoff_max_s=0.2),
        drain_timeout_s=1.0,
        log_interval_s=0,
        head_thread=True,
    )
    with agent_thread(options, lambda r: results.setdefault(r.record.id, True)) as (_agent, out):
        wait_for(lambda: len(results) >= 100, what="100 frames")
        serve.kill()  # and never comes back: the agent keeps trying until it is stopped
        time.sleep(0.5)
    report = out[0]
    s = report.summary
    assert s["lost"] >= 1 and s["failed"] == 0
    assert s["captured"] == s["completed"] + s["lost"] == len(results) + s["lost"]
