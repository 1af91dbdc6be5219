"""Frames over a gRPC message limit (the agent's own or the server's) fail with the reason and are
never resent: the agent does not reconnect for ever, and ends with one line when nothing gets
through. A stream that merely breaks still reconnects and resends (test_agent_daemon.py)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from splitpipe import cli
from splitpipe.edge import AgentOptions, ClientOptions, load_export, run_agent
from splitpipe.edge.client import TOO_LARGE_STRIKES, Pending, StreamClient
from splitpipe.edge.wire import RequestBuilder
from splitpipe.errors import SplitpipeError
from splitpipe.server import ServerOptions, ServerThread
from tests.edge.conftest import Exports, ServeProcess, free_port

FRAME = 8230  # bytes of one request of the raw export (an 8 KiB cut tensor)


def _options(export: Path, port: int, report: Path, **client: Any) -> AgentOptions:
    return AgentOptions(
        export,
        server=f"127.0.0.1:{port}",
        frames=20,
        log_interval_s=0,
        report=report,
        client=ClientOptions(connect_timeout_s=10, **client),
    )


def test_a_frame_over_the_agents_own_limit_is_never_sent(
    exports: Exports, server: ServerThread, tmp_path: Path
) -> None:
    report = tmp_path / "r.json"
    started = time.monotonic()
    with pytest.raises(SplitpipeError) as caught:
        run_agent(_options(exports.raw, server.port, report, max_message_bytes=4096))
    assert str(caught.value).startswith(
        f"frame 0 is {FRAME:,} bytes, over this agent's message limit of 4,096 bytes (--max-message-mb); "
        "no frame got through"
    )
    assert time.monotonic() - started < 10
    s = json.loads(report.read_text())["summary"]  # the run's report is not lost
    assert (
        s["failed"] >= 1
        and s["completed"] == 0
        and s["lost"] == 0
        and s["reconnects"] == 0
        and s["resent"] == 0
    )
    frame = json.loads(report.read_text())["frames"][0]
    assert "over this agent's message limit" in frame["error"] and frame["sends"] == 0


def test_a_frame_over_the_servers_limit_fails_at_once_with_the_reason(
    exports: Exports, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "r.json"
    with ServerThread([exports.raw], ServerOptions(max_message_bytes=4096)) as small:
        args = ["agent", str(exports.raw), "--server", f"127.0.0.1:{small.port}", "--frames", "3"]
        code = cli.main([*args, "--log-interval", "0", "--connect-timeout", "5", "--report", str(report)])
    err = [line for line in capsys.readouterr().err.splitlines() if "splitpipe agent: error" in line]
    assert code == 2 and len(err) == 1, err
    assert "over the server's message limit" in err[0] and "serve --max-message-mb" in err[0], err
    s = json.loads(report.read_text())["summary"]
    assert (
        s["failed"] >= 1 and s["completed"] == 0 and s["lost"] == 0 and s["reconnects"] <= TOO_LARGE_STRIKES
    )


def test_serve_max_message_mb_refuses_a_large_frame_as_a_separate_process(exports: Exports) -> None:
    """`splitpipe serve` in its own process: there the refusal often races the agent's write of
    the large message and gRPC reports INTERNAL (or just an ended stream), not RESOURCE_EXHAUSTED."""
    serve = ServeProcess([exports.raw], free_port(), "--max-message-mb", "1").start()
    replies: list[tuple[Pending, Any]] = []

    async def main() -> StreamClient:
        client = StreamClient(
            f"127.0.0.1:{serve.port}", "tiny-raw", lambda p, r, t: replies.append((p, r)), ClientOptions()
        )
        await client.start()
        try:
            for i in range(3):
                await client.send(str(i), b"\x0a" + bytes(5 << 20))
            await client.drain(30)
        except SplitpipeError as exc:
            assert "message limit" in str(exc) and "no frame got through" in str(exc), exc
        else:
            raise AssertionError("no frame got through, the client must fail")
        finally:
            await client.close()
        return client

    try:
        client = asyncio.run(main())
    finally:
        serve.stop()
    assert client.reconnects <= TOO_LARGE_STRIKES
    error = replies[0][1].error_message
    assert (
        replies[0][0].id == "0" and "message limit" in error and "(splitpipe serve --max-message-mb)" in error
    )


def test_frames_that_fit_go_on_after_one_the_server_refuses(exports: Exports) -> None:
    """Once a frame got through, one too large for the server fails alone; the server's limit is
    learnt, so a later frame over it fails without being sent (no broken stream)."""
    builder = RequestBuilder(load_export(exports.raw))
    cut = {"relu_2": np.zeros((1, 8, 16, 16), np.float32)}
    big = b"\x0a" + bytes(20_000)
    replies: dict[str, str] = {}

    async def main(port: int) -> StreamClient:
        client = StreamClient(
            f"127.0.0.1:{port}",
            "tiny-raw",
            lambda p, r, t: replies.setdefault(p.id, r.error_message),
            ClientOptions(connect_timeout_s=5, backoff_initial_s=0.05),
        )
        await client.start()
        for i in range(5):
            frame_id = str(i)
            await client.send(frame_id, builder.build(frame_id, cut).data if i % 2 == 0 else big)
            assert await client.drain(30), frame_id
        await client.close()
        return client

    with ServerThread([exports.raw], ServerOptions(max_message_bytes=16 << 10)) as server:
        client = asyncio.run(main(server.port))
    assert replies["0"] == replies["2"] == replies["4"] == ""
    for frame_id in ("1", "3"):
        assert "over the server's message limit" in replies[frame_id] or "most likely" in replies[frame_id]
    if client.server_limit is not None:  # learnt from RESOURCE_EXHAUSTED: frame 3 was never sent
        assert client.server_limit == 16 << 10
        assert client.reconnects == 1
        assert replies["3"] == "frame 3 is 20,001 bytes, over the server's message limit of 16,384 bytes " + (
            "(splitpipe serve --max-message-mb)"
        )
