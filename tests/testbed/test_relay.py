"""The delaying relay on loopback: real sockets, real asyncio, no root needed."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from splitpipe.testbed.relay import RelayConfig, start

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _count_then_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read to EOF, then answer with the byte count: needs the client's half-close to arrive."""
    total = 0
    while data := await reader.read(65536):
        total += len(data)
    writer.write(f"{total}\n".encode())
    await writer.drain()
    writer.close()


async def _with_relay(
    tmp_path: Path, cfg: RelayConfig, handler: Handler, body: Callable[[int, Path], Awaitable[None]]
) -> None:
    config = tmp_path / "relay.json"
    cfg.write(config)
    target = await asyncio.start_server(handler, "127.0.0.1", 0)
    target_port = target.sockets[0].getsockname()[1]
    relay = await start(("127.0.0.1", 0), ("127.0.0.1", target_port), config)
    try:
        await body(relay.sockets[0].getsockname()[1], config)
    finally:
        relay.close()
        target.close()


async def _round_trips(port: int, count: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = []
    t0 = time.perf_counter()  # the first round trip counts from connect: it pays the handshake
    for _ in range(count):
        writer.write(b"x" * 64)
        await writer.drain()
        await reader.readexactly(64)
        now = time.perf_counter()
        out.append((now - t0) * 1000)
        t0 = now
    writer.close()
    return out


def test_round_trip_is_twice_the_one_way_delay_after_a_handshake(tmp_path: Path) -> None:
    async def body(port: int, config: Path) -> None:
        rtts = await _round_trips(port, 8)
        # connect + first exchange: one RTT of handshake and one of data, as over a real link;
        # never less than asked; the upper bounds only rule out a doubled delay or stop-and-wait,
        # since a busy machine may wake this (normal priority) test relay late
        assert 80 <= rtts[0] <= 120, rtts
        assert min(rtts[1:]) >= 40 and statistics.median(rtts[1:]) <= 55, rtts

    asyncio.run(_with_relay(tmp_path, RelayConfig(20, 1 << 20), _echo, body))


def test_delay_is_read_per_connection(tmp_path: Path) -> None:
    async def body(port: int, config: Path) -> None:
        first = statistics.median((await _round_trips(port, 5))[1:])
        RelayConfig(5, 1 << 20).write(config)
        second = statistics.median((await _round_trips(port, 5))[1:])
        assert 40 <= first <= 55 and 10 <= second <= 25

    asyncio.run(_with_relay(tmp_path, RelayConfig(20, 1 << 20), _echo, body))


def test_delay_line_preserves_throughput(tmp_path: Path) -> None:
    """4 MiB through a 50 ms relay: a stop-and-wait relay would need >= 64 x 50 ms = 3.2 s."""
    size = 4 << 20

    async def body(port: int, config: Path) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        t0 = time.perf_counter()
        writer.write(bytes(size))
        writer.write_eof()
        reply = await reader.readline()
        elapsed = time.perf_counter() - t0
        writer.close()
        assert int(reply) == size  # every byte arrived, and the half-close travelled after them
        # handshake + one-way there + one-way back, plus 4 MiB at the delay line's 8 MiB / 50 ms
        assert 0.2 <= elapsed < 2.0, elapsed

    asyncio.run(_with_relay(tmp_path, RelayConfig(50, 8 << 20), _count_then_reply, body))


def test_small_buffer_pushes_back(tmp_path: Path) -> None:
    """With 64 KiB in a 50 ms line, the relay moves at most 64 KiB per 50 ms: 1 MiB takes >= 0.75 s."""
    size = 1 << 20

    async def body(port: int, config: Path) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        t0 = time.perf_counter()
        writer.write(bytes(size))
        writer.write_eof()
        assert int(await reader.readline()) == size
        assert time.perf_counter() - t0 >= 0.75
        writer.close()

    asyncio.run(_with_relay(tmp_path, RelayConfig(50, 64 << 10), _count_then_reply, body))


def test_unreachable_target_closes_the_client(tmp_path: Path) -> None:
    async def body() -> None:
        config = tmp_path / "relay.json"
        RelayConfig(1, 1 << 16).write(config)
        dead = await asyncio.start_server(_echo, "127.0.0.1", 0)
        dead_port = dead.sockets[0].getsockname()[1]
        dead.close()
        await dead.wait_closed()
        relay = await start(("127.0.0.1", 0), ("127.0.0.1", dead_port), config)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.sockets[0].getsockname()[1])
            assert await asyncio.wait_for(reader.read(), timeout=5) == b""
            writer.close()
        finally:
            relay.close()

    asyncio.run(body())


def test_zero_delay_passes_straight_through(tmp_path: Path) -> None:
    async def body(port: int, config: Path) -> None:
        rtts = await _round_trips(port, 5)
        assert statistics.median(rtts[1:]) < 10

    asyncio.run(_with_relay(tmp_path, RelayConfig(0.0, 1 << 20), _echo, body))
