"""A delaying TCP relay: the round-trip delay, where the kernel has no netem qdisc.

It runs inside the device namespace as a sidecar, listens on ``127.0.0.1:PORT`` and forwards
to the server's ``10.77.0.2:PORT`` across the shaped veth. Each direction is a delay line,
not a stop-and-wait: every chunk read is stamped with its arrival time and written out one
one-way delay later, while later chunks keep arriving, so the throughput of the link behind it
is preserved and a message of B bytes arrives after ``delay + B / rate`` as on a real link.

- The TCP handshake is emulated too: no byte is delivered before one RTT after accept (the
  SYN/SYN-ACK exchange) plus the one-way delay, as a fresh connection would see.
- Each direction holds at most ``buffer_bytes`` before it stops reading (back-pressure to the
  sender); the testbed sizes it at twice the link's bandwidth-delay product, at least 64 KiB.
- The socket across the link gets small send and receive buffers (``socket_buffer_bytes``),
  so that the relay's TCP never overfills the link's queue (see splitpipe.testbed.link).
- The delay and buffers are read from a small JSON file at each accept, so ``testbed set``
  changes them for new connections without restarting the relay.
- Sockets are TCP_NODELAY both ways: Nagle's algorithm would otherwise hold small writes back.
- It runs at a low real-time priority (see :func:`raise_priority`): it stands for the network,
  which should not wait for a busy CPU.

Run as ``python -m splitpipe.testbed.relay --listen HOST:PORT --connect HOST:PORT --config F
--pidfile P``; the pid file appears once the socket listens, and goes when the relay stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import selectors
import signal
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

_LOGGER = logging.getLogger(__name__)
_CHUNK = 64 * 1024
MIN_BUFFER_BYTES = 64 * 1024


@dataclass(frozen=True)
class RelayConfig:
    one_way_delay_ms: float
    #: most bytes one direction of a connection holds in the delay line
    buffer_bytes: int
    #: SO_SNDBUF and SO_RCVBUF of the socket across the shaped link (0: kernel default)
    socket_buffer_bytes: int = 0

    @classmethod
    def for_link(cls, rate_mbit: float, rtt_ms: float) -> RelayConfig:
        from splitpipe.testbed.link import relay_socket_buffer

        bdp = rate_mbit * 1e6 / 8 * rtt_ms / 2 / 1000
        return cls(rtt_ms / 2, max(MIN_BUFFER_BYTES, int(2 * bdp)), relay_socket_buffer(rate_mbit))

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(path)

    @classmethod
    def read(cls, path: Path) -> RelayConfig:
        data = json.loads(path.read_text())
        return cls(
            float(data["one_way_delay_ms"]),
            int(data["buffer_bytes"]),
            int(data.get("socket_buffer_bytes", 0)),
        )


class _DelayLine:
    """One direction: read chunks, hold each for the delay, write them out in order."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        delay_s: float,
        not_before: float,
        limit: int,
    ) -> None:
        self._reader, self._writer = reader, writer
        self._delay, self._not_before, self._limit = delay_s, not_before, limit
        self._queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
        self._pending = 0
        self._room = asyncio.Event()
        self._room.set()

    async def _pump_in(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._room.wait()
            try:
                data: bytes | None = await self._reader.read(_CHUNK)
            except ConnectionError:
                data = None  # a reset travels like data: it arrives after what was sent before it
            self._queue.put_nowait((max(loop.time(), self._not_before) + self._delay, data))
            if not data:
                return
            self._pending += len(data)
            if self._pending >= self._limit:
                self._room.clear()

    async def _pump_out(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await self._queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                self._writer.transport.abort()
                return
            if not data:
                if self._writer.can_write_eof():
                    self._writer.write_eof()
                return
            self._writer.write(data)
            await self._writer.drain()
            self._pending -= len(data)
            if self._pending < self._limit:
                self._room.set()

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._pump_in()), asyncio.create_task(self._pump_out())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                exc = task.exception()
                if exc is not None:
                    raise exc
        finally:
            for task in tasks:
                task.cancel()


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Relay:
    def __init__(self, target: tuple[str, int], config_path: Path) -> None:
        self._target = target
        self._config_path = config_path

    async def handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        accepted = loop.time()
        cfg = RelayConfig.read(self._config_path)
        delay = cfg.one_way_delay_ms / 1000
        _nodelay(c_writer)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if cfg.socket_buffer_bytes:
            # before connect, so the advertised window is small from the start: in-flight
            # data must fit the link's queue, or tail drops cost 200 ms timeouts
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, cfg.socket_buffer_bytes)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, cfg.socket_buffer_bytes)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, self._target)
            s_reader, s_writer = await asyncio.open_connection(sock=sock)
        except OSError as exc:
            _LOGGER.warning("cannot reach %s:%d: %s", *self._target, exc)
            sock.close()
            c_writer.close()
            return
        _nodelay(s_writer)
        not_before = accepted + 2 * delay
        lines = [
            asyncio.create_task(_DelayLine(c_reader, s_writer, delay, not_before, cfg.buffer_bytes).run()),
            asyncio.create_task(_DelayLine(s_reader, c_writer, delay, not_before, cfg.buffer_bytes).run()),
        ]
        try:
            # both directions end on EOF; a reset on either ends the connection
            done, _ = await asyncio.wait(lines, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    _LOGGER.debug("connection ended: %s", task.exception())
        finally:
            for task in lines:
                task.cancel()
            for w in (c_writer, s_writer):
                w.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await w.wait_closed()


async def start(listen: tuple[str, int], target: tuple[str, int], config: Path) -> asyncio.Server:
    """A listening relay (port 0 picks a free port; see ``server.sockets``)."""
    relay = Relay(target, config)
    return await asyncio.start_server(relay.handle, *listen, reuse_address=True)


async def serve(listen: tuple[str, int], target: tuple[str, int], config: Path, pidfile: Path | None) -> None:
    server = await start(listen, target, config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if pidfile is not None:
        tmp = pidfile.with_suffix(".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        tmp.replace(pidfile)
    _LOGGER.info("relay %s:%d -> %s:%d listening", *listen, *target)
    try:
        await stop.wait()
    finally:
        server.close()
        if pidfile is not None:
            with contextlib.suppress(FileNotFoundError):
                pidfile.unlink()


#: real-time priority of the processes that stand for the network (relay, link probes)
NETWORK_RT_PRIORITY = 10
#: their nice value where real-time scheduling is refused
NETWORK_NICE = -10


def raise_priority() -> str:
    """Run ahead of ordinary processes: the emulated network must not wait for a busy CPU.

    netem delays packets in the kernel's softirq context, ahead of every process; the relay's
    equivalent is a low real-time priority (SCHED_FIFO 10). On this machine, loaded by other
    work, 1 ms sleeps woke up to 127 ms late at nice -10 and at most 1.2 ms late under
    SCHED_FIFO. The relay sleeps between chunks, so it takes little CPU, and the kernel's
    real-time throttling (95 % by default) bounds it anyway. Returns the policy obtained.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(NETWORK_RT_PRIORITY))
        return f"SCHED_FIFO {NETWORK_RT_PRIORITY}"
    except OSError:
        pass
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, NETWORK_NICE)
        return f"nice {NETWORK_NICE}"
    return "normal"


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m splitpipe.testbed.relay", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--listen", type=_addr, required=True, help="HOST:PORT to accept on")
    parser.add_argument("--connect", type=_addr, required=True, help="HOST:PORT to forward to")
    parser.add_argument(
        "--config", type=Path, required=True, help="JSON file with one_way_delay_ms, buffer_bytes"
    )
    parser.add_argument("--pidfile", type=Path, help="written once listening, removed on exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s relay %(levelname)s: %(message)s")
    _LOGGER.info("scheduling: %s", raise_priority())
    # select() sleeps to the microsecond; epoll, asyncio's default, rounds its timeout up to the
    # next millisecond, which added up to 1 ms per direction. A relay has few sockets.
    loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
    try:
        loop.run_until_complete(serve(args.listen, args.connect, args.config, args.pidfile))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
