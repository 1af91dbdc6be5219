"""Measurement probes: the processes that measure a testbed's link and CPU throttle.

``serve`` runs on the server side and answers three kinds of connection, chosen by the first
byte: ``U`` (a sink that times what arrives for a given time and sends back the rate), ``D``
(a source that sends until the client hangs up), ``E`` (an echo for round-trip times), ``R``
(requests of a given size, each answered by a small reply: what a split's head sends).
``link`` runs on the device side and measures uplink rate, downlink rate and RTT through the
address the device would dial; ``transfer`` times requests of given sizes. ``spin`` times a fixed pure-Python loop, first free, then, once
the parent has moved it into the throttled cgroup, again (the parent reads the cgroup's CPU
time around the second loop).

Rates are TCP goodput: the least-squares slope of bytes received against time, after a short
warm-up (tbf's initial burst and TCP slow start would otherwise count).

Standard library only; each probe prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import socket
import socketserver
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

_CHUNK = 64 * 1024
_HEADER = struct.Struct("!cI")  # mode, duration in ms
_ECHO_BYTES = 64
_WARMUP = 0.15  # fraction of the timed window skipped at its start
_LEN = struct.Struct("!Q")
MAX_REQUEST_BYTES = 256 << 20  # a length from the network is checked before anything is read


def goodput_mbit(samples: list[tuple[float, int]]) -> float:
    """Slope of (time, cumulative bytes) after the warm-up, Mbit/s."""
    if len(samples) < 3:
        raise ValueError("too few samples to estimate a rate")
    t0, t1 = samples[0][0], samples[-1][0]
    window = [s for s in samples if s[0] >= t0 + _WARMUP * (t1 - t0)]
    if len(window) < 3:
        window = samples
    slope = statistics.linear_regression([s[0] for s in window], [float(s[1]) for s in window]).slope
    return slope * 8 / 1e6


def _receive_for(sock: socket.socket, seconds: float) -> list[tuple[float, int]]:
    """Receive for ``seconds`` after the first byte; (arrival time, cumulative bytes) per recv."""
    samples: list[tuple[float, int]] = []
    total = 0
    end = float("inf")
    while True:
        data = sock.recv(_CHUNK)
        now = time.monotonic()
        if not data:
            break
        if not samples:
            end = now + seconds
        total += len(data)
        samples.append((now, total))
        if now >= end:
            break
    return samples


def _nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        _nodelay(sock)
        header = _recv_exact(sock, _HEADER.size)
        if header is None:
            return
        mode, duration_ms = _HEADER.unpack(header)
        try:
            if mode == b"U":
                samples = _receive_for(sock, duration_ms / 1000)
                reply = {
                    "mbit": goodput_mbit(samples),
                    "bytes": samples[-1][1],
                    "seconds": samples[-1][0] - samples[0][0],
                }
                sock.sendall(json.dumps(reply).encode() + b"\n")
                # closing with unread bytes would send a reset that could overtake the reply
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(_CHUNK):
                    pass
            elif mode == b"D":
                chunk = bytes(_CHUNK)
                while True:
                    sock.sendall(chunk)
            elif mode == b"E":
                while data := sock.recv(_CHUNK):
                    sock.sendall(data)
            elif mode == b"R":
                _answer_requests(sock)
        except (ConnectionError, ValueError, OSError):
            return


def _answer_requests(sock: socket.socket) -> None:
    buf = bytearray(_CHUNK)
    while (head := _recv_exact(sock, _LEN.size)) is not None:
        (left,) = _LEN.unpack(head)
        if left > MAX_REQUEST_BYTES:
            return
        while left:
            n = sock.recv_into(buf, min(left, _CHUNK))
            if not n:
                return
            left -= n
        sock.sendall(head)


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            return None
        buf += data
    return buf


def serve(port: int, ready_file: Path | None) -> None:
    with _Server(("0.0.0.0", port), _Handler) as server:
        if ready_file is not None:
            ready_file.write_text(f"{os.getpid()}\n")
        server.serve_forever()


def _connect(addr: tuple[str, int], mode: bytes, seconds: float) -> socket.socket:
    sock = socket.create_connection(addr, timeout=30)
    _nodelay(sock)
    sock.sendall(_HEADER.pack(mode, round(seconds * 1000)))
    return sock


def uplink(addr: tuple[str, int], seconds: float) -> dict[str, float]:
    """Send as fast as the link takes it until the server's sink replies with what it timed."""
    sock = _connect(addr, b"U", seconds)
    sock.setblocking(False)
    chunk = memoryview(bytes(_CHUNK))
    reply = b""
    deadline = time.monotonic() + seconds + 30
    try:
        while not reply.endswith(b"\n"):
            if time.monotonic() > deadline:
                raise TimeoutError("uplink sink did not reply")
            readable, writable, _ = select.select([sock], [sock], [], 1.0)
            if readable:
                data = sock.recv(4096)
                if not data:
                    raise ConnectionError("uplink sink closed without a reply")
                reply += data
            elif writable:
                with contextlib.suppress(BlockingIOError):
                    sock.send(chunk)
    finally:
        _abort(sock)
    result: dict[str, float] = json.loads(reply)
    return result


def _abort(sock: socket.socket) -> None:
    """Close with a reset: what is still queued to send is dropped, not left to clog the link."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def downlink(addr: tuple[str, int], seconds: float) -> dict[str, float]:
    sock = _connect(addr, b"D", seconds)
    try:
        samples = _receive_for(sock, seconds)
    finally:
        _abort(sock)
    return {"mbit": goodput_mbit(samples), "bytes": samples[-1][1], "seconds": samples[-1][0] - samples[0][0]}


def rtt(addr: tuple[str, int], count: int) -> list[float]:
    """Round trips of a small message, ms; the first (which pays the handshake) is dropped."""
    sock = _connect(addr, b"E", 0)
    msg = bytes(_ECHO_BYTES)
    out: list[float] = []
    try:
        for _ in range(count + 1):
            t0 = time.perf_counter()
            sock.sendall(msg)
            if _recv_exact(sock, _ECHO_BYTES) is None:
                raise ConnectionError("echo server closed")
            out.append((time.perf_counter() - t0) * 1000)
    finally:
        sock.close()
    return out[1:]


def transfer(addr: tuple[str, int], sizes: list[int], repeat: int) -> dict[str, list[float]]:
    """Per size, the times (ms) from sending a request of that many bytes to its small reply.

    One connection for all, opened and warmed up first, so no handshake is counted.
    """
    sock = _connect(addr, b"R", 0)
    out: dict[str, list[float]] = {}
    try:
        sock.sendall(_LEN.pack(0))
        _recv_exact(sock, _LEN.size)
        for size in sizes:
            payload = _LEN.pack(size) + bytes(size)
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                sock.sendall(payload)
                if _recv_exact(sock, _LEN.size) is None:
                    raise ConnectionError("request server closed")
                times.append((time.perf_counter() - t0) * 1000)
            out[str(size)] = times
    finally:
        sock.close()
    return out


def _loop(iterations: int) -> int:
    acc = 0
    for i in range(iterations):
        acc = (acc + i * i) % 1_000_003
    return acc


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) seconds of a call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def spin(free_seconds: float, core: int | None) -> None:
    """Calibrate a loop to ``free_seconds`` unthrottled, then (after 'go' on stdin) run it again.

    The free run's reference is its CPU time, not its wall time: on a shared machine other
    processes on the same core stretch the wall time of a free loop but not its CPU time.
    """
    if core is not None:
        os.sched_setaffinity(0, {core})
    batch = 20_000
    iterations = 0
    t0 = time.process_time()
    while time.process_time() - t0 < free_seconds:
        _loop(batch)
        iterations += batch
    # the least CPU time of a few runs: time stolen by a busy host inflates some of them
    free_wall, free_cpu = min((_timed(lambda: _loop(iterations)) for _ in range(3)), key=lambda t: t[1])
    print(json.dumps({"ready": True, "iterations": iterations}), flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    print(json.dumps({"start": True}), flush=True)
    wall, cpu = _timed(lambda: _loop(iterations))
    print(
        json.dumps(
            {
                "iterations": iterations,
                "free_wall_s": free_wall,
                "free_cpu_s": free_cpu,
                "throttled_wall_s": wall,
                "throttled_cpu_s": cpu,
            }
        ),
        flush=True,
    )


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m splitpipe.testbed.probe")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ready-file", type=Path)
    p = sub.add_parser("link")
    p.add_argument("--connect", type=_addr, required=True)
    p.add_argument("--uplink-s", type=float, default=1.0)
    p.add_argument("--downlink-s", type=float, default=0.5)
    p.add_argument("--rtt-count", type=int, default=10)
    p = sub.add_parser("transfer")
    p.add_argument("--connect", type=_addr, required=True)
    p.add_argument("--sizes", type=lambda t: [int(x) for x in t.split(",")], required=True)
    p.add_argument("--repeat", type=int, default=3)
    p = sub.add_parser("spin")
    p.add_argument("--free-s", type=float, default=0.1)
    p.add_argument("--core", type=int)
    args = parser.parse_args(argv)
    if args.cmd in ("serve", "link", "transfer"):
        from splitpipe.testbed.relay import raise_priority

        raise_priority()  # these measure the network; the CPU probe keeps normal scheduling
    if args.cmd == "serve":
        serve(args.port, args.ready_file)
    elif args.cmd == "link":
        # RTT first, on an idle link; the bulk transfers leave up to a queue's worth behind
        out: dict[str, object] = {}
        phases: list[tuple[str, float, Callable[[], object]]] = [
            ("rtt_ms", args.rtt_count, lambda: rtt(args.connect, args.rtt_count)),
            ("downlink", args.downlink_s, lambda: downlink(args.connect, args.downlink_s)),
            ("uplink", args.uplink_s, lambda: uplink(args.connect, args.uplink_s)),
        ]
        for name, amount, phase in phases:
            if amount <= 0:
                continue
            t0 = time.monotonic()
            try:
                out[name] = phase()
            except (OSError, ValueError) as exc:
                # one line that says which phase failed and after how long
                print(f"{name} failed after {time.monotonic() - t0:.1f} s: {exc!r}", file=sys.stderr)
                return 1
        print(json.dumps(out), flush=True)
    elif args.cmd == "transfer":
        print(json.dumps(transfer(args.connect, args.sizes, args.repeat)), flush=True)
    else:
        spin(args.free_s, args.core)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
