#!/usr/bin/env python
"""The streaming pipeline end to end on loopback, against the physical limits it must approach.

(a) ``splitpipe serve`` + the agent with a trivial split (head: Identity, tail: ReduceMax) moving
    10 KB and 1 MB float32 tensors, against a bare grpcio echo stream moving messages of the same
    sizes with the same window: an echo server that only answers each message with a
    pre-serialized reply of our server's reply size, and a client that only writes pre-built
    bytes and reads replies. Ratio = our frames/s over echo messages/s (target >= 0.7).
(b) A real split (a torchvision model cut near the middle, int8): the agent's achieved frames/s
    as a fraction of its slowest stage, both measured in the same run (target >= 0.85).
(t) What TLS costs: agent + serve as in (a), plaintext against TLS (a fresh test CA and server
    certificate), in alternating rounds: frames/s and CPU per frame on both sides.
(c) Diagnosis of (a) at 10 KB: the client process's CPU per frame of our stream client alone
    (pre-built requests), of the agent, of the agent with its head's runtime call replaced by
    handing the input through, and with that call replaced by ``time.sleep(0)`` (which only
    releases and retakes the GIL, as ONNX Runtime's ``run()`` does), in alternating rounds.
(s) The same for the server at 10 KB: CPU per request of its request path (parse, check, run
    the tail, build the response) called alone in this process, then ``splitpipe serve`` under
    the bare echo client (the agent's exact bytes) as it is, with the tail's runtime call
    replaced by the same reduction in numpy (which keeps the GIL), and answering every request
    with the first response (no parse, check, tail or response), in alternating rounds.

Both servers are separate processes; the clients (our agent, the echo client) run in this one,
in alternating rounds so that other load on the machine affects both alike.

    .venv/bin/python bench/pipeline.py                      # both parts, ~2-3 minutes
    .venv/bin/python bench/pipeline.py --part a --seconds 4 --rounds 5
    .venv/bin/python bench/pipeline.py --part b --model torchvision:resnet18
    .venv/bin/python bench/pipeline.py --part c --seconds 2 --rounds 5
    .venv/bin/python bench/pipeline.py --part s --seconds 2 --rounds 5
    .venv/bin/python bench/pipeline.py --part tls --seconds 3 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from splitpipe.edge import Agent, AgentOptions, ClientOptions  # noqa: E402
from splitpipe.edge.client import STREAM_METHOD, StreamClient  # noqa: E402
from splitpipe.proto.inference import grpc_service_pb2 as pb  # noqa: E402

MIB = 1 << 20
GRPC_OPTIONS = [("grpc.max_send_message_length", 256 * MIB), ("grpc.max_receive_message_length", 256 * MIB)]
RESULTS = REPO / "bench" / "results"


# -- exports ---------------------------------------------------------------------------------


def trivial_export(directory: Path, features: int) -> Path:
    """head: Identity (input_0 -> x), tail: y = ReduceMax(x) [N, 1]: the cheapest tail that reads x."""
    from onnx import helper

    from tests.server.tiny_tails import write_export

    return write_export(
        directory,
        f"trivial-{features}",
        [helper.make_node("ReduceMax", ["x"], ["y"], axes=[1], keepdims=1)],
        cut=[{"name": "x", "dtype": "float32", "shape": [None, features]}],
        outputs=[{"name": "y", "dtype": "float32", "shape": [None, 1]}],
    )


def middle_split(model: str, directory: Path, codec: str) -> tuple[Path, dict[str, Any]]:
    """Export the cut whose measured head time is closest to half of the whole model's."""
    from splitpipe.partition.export import export_split
    from splitpipe.partition.plan import PlanRequest, analyse, make_plan

    req = PlanRequest(model=model, codec=codec, repeats=3, warmup=1, calibration_samples=1)
    analysis = analyse(req)
    plan = make_plan(req, analysis=analysis)
    full = plan.baselines["local"].head_ms
    best = min(plan.candidates, key=lambda c: abs(c.head_ms - full / 2))
    result = export_split(req, best.id, directory, plan=plan, analysis=analysis)
    info = {
        "model": model,
        "split": best.id,
        "label": best.label,
        "codec": codec,
        "planned_head_ms": best.head_ms,
        "planned_tail_ms": best.tail_ms,
        "whole_model_ms": full,
        "cut": result.manifest["cut"],
    }
    return result.out, info


# -- servers ---------------------------------------------------------------------------------


def start_serve(export: Path, extra: list[str], variant: str = "") -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "SPLITPIPE_LOG_LEVEL": "WARNING"}
    # a variant of part (s) runs serve through this file, which patches the server first
    command = [__file__, "--serve-variant", variant, "--"] if variant else ["-m", "splitpipe"]
    proc = subprocess.Popen(
        [sys.executable, *command, "serve", str(export), "--host", "127.0.0.1", "--port", "0",
         "--log-interval", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"listening on [\d.]+:(\d+)", line)
    if not match:
        raise SystemExit(
            f"splitpipe serve did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
        )
    return proc, int(match.group(1))


async def _echo_main(port_file: str, reply_bytes: int, inputs: str) -> None:
    reply = pb.ModelStreamInferResponse()
    reply.infer_response.raw_output_contents.append(b"\0" * reply_bytes)
    blob = reply.SerializeToString()

    async def stream(request_iterator: Any, context: Any) -> Any:
        async for _request in request_iterator:  # bytes: nothing is parsed
            yield blob

    async def metadata(request: bytes, context: Any) -> bytes:
        # what the agent checks once when it connects (only for diagnosing the agent alone)
        response = pb.ModelMetadataResponse(name=pb.ModelMetadataRequest.FromString(request).name)
        for item in filter(None, inputs.split(",")):
            name, datatype = item.split(":")
            response.inputs.add(name=name, datatype=datatype)
        return response.SerializeToString()

    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(stream),
            "ModelMetadata": grpc.unary_unary_rpc_method_handler(metadata),
        },
    )
    server = grpc.aio.server(options=GRPC_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    Path(port_file).write_text(str(port))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)


def start_echo(tmp: Path, reply_bytes: int, inputs: str = "x:FP32") -> tuple[subprocess.Popen[str], int]:
    port_file = tmp / f"echo-{time.monotonic_ns()}.port"
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--echo-server",
            str(port_file),
            "--reply-bytes",
            str(reply_bytes),
            "--inputs",
            inputs,
        ],
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("echo server did not start")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


# -- clients ---------------------------------------------------------------------------------


class Cpu:
    """CPU time (user + system, all threads) of this process (the clients) and of a server
    process, for CPU per message over a measuring window."""

    def __init__(self, server_pid: int) -> None:
        self.server = psutil.Process(server_pid)

    def __call__(self) -> tuple[float, float]:
        times = self.server.cpu_times()
        return time.process_time(), times.user + times.system

    @staticmethod
    def per_message(before: tuple[float, float], after: tuple[float, float], n: int) -> dict[str, float]:
        n = max(n, 1)
        return {
            "client_cpu_us": (after[0] - before[0]) / n * 1e6,
            "server_cpu_us": (after[1] - before[1]) / n * 1e6,
        }


async def _echo_client(
    port: int, message: bytes, window: int, seconds: float, cpu: Cpu | None = None
) -> dict[str, float]:
    """The bare stream: write pre-built bytes with ``window`` unanswered, count replies."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS) as channel:
        call = channel.stream_stream(STREAM_METHOD)()
        slots = asyncio.Semaphore(window)
        done = False

        async def writer() -> None:
            while not done:
                await slots.acquire()
                await call.write(message)

        task = asyncio.create_task(writer())
        for _ in range(window):  # warm up the connection
            await call.read()
            slots.release()
        received = 0
        before = cpu() if cpu else (0.0, 0.0)
        start = time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            await call.read()
            received += 1
            slots.release()
        after = cpu() if cpu else (0.0, 0.0)
        done = True
        task.cancel()
        call.cancel()
    return {"fps": received / elapsed, "frames": received, **Cpu.per_message(before, after, received)}


def echo_round(
    port: int, message: bytes, window: int, seconds: float, cpu: Cpu | None = None
) -> dict[str, float]:
    return asyncio.run(_echo_client(port, message, window, seconds, cpu))


def agent_round(
    export: Path,
    port: int,
    window: int,
    seconds: float,
    threads: int = 1,
    cpu: Cpu | None = None,
    tls: Any = None,
) -> dict[str, Any]:
    """Our agent for ``seconds`` (then stopped and drained); its report's figures, and CPU per
    frame in its steady state (after its start-up: loading the head, connecting)."""
    options = AgentOptions(
        export,
        server=f"127.0.0.1:{port}",
        client=ClientOptions(window=window, tls=tls),
        threads=threads,
        log_interval_s=0,
    )
    agent = Agent(options)
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(asyncio.run(agent.run())), daemon=True)
    thread.start()
    warm = min(0.5, seconds / 3)
    time.sleep(warm)
    before, done_before, start = (cpu() if cpu else (0.0, 0.0)), agent.completed, time.perf_counter()
    time.sleep(seconds - warm)
    after, done_after, end = (cpu() if cpu else (0.0, 0.0)), agent.completed, time.perf_counter()
    agent.stop()
    thread.join()
    report = out[0]
    s = report.summary
    return {
        **Cpu.per_message(before, after, done_after - done_before),
        "steady_fps": (done_after - done_before) / (end - start),
        "fps": s["fps"],
        "frames": s["completed"],
        "lost": s["lost"],
        "failed": s["failed"],
        "bytes_per_frame": s["bytes_per_frame"],
        "payload_bytes_per_frame": s["payload_bytes_per_frame"],
        "achieved_fraction": s["achieved_fraction"],
        "bound": s["bound"],
        "e2e_ms": s["latency"].get("e2e_ms"),
        "rtt_ms": s["latency"].get("rtt_ms"),
        "head_ms": s["latency"].get("head_ms"),
        "encode_ms": s["latency"].get("encode_ms"),
        "server_tail_ms": s["latency"].get("server_tail_ms"),
        "server_total_ms": s["latency"].get("server_total_ms"),
        "report": report,
    }


def _agent_request(export: Path) -> bytes:
    """The exact bytes the agent sends for one frame of ``export`` (for the echo client)."""
    from splitpipe.edge import SyntheticSource, load_export
    from splitpipe.edge.wire import RequestBuilder

    e = load_export(export)
    feed = SyntheticSource(e.inputs).frame(0)
    return RequestBuilder(e).build("0", {e.cut[0].name: feed[e.inputs[0].name]}).data


# -- parts -----------------------------------------------------------------------------------


def _reply_bytes(port: int, message: bytes) -> int:
    """The size of the server's reply to ``message``: what the echo answers with."""
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS) as channel:
        reply = channel.stream_stream(STREAM_METHOD)(iter([message]))
        return len(pb.ModelStreamInferResponse.FromString(next(reply)).SerializeToString())


def part_a(sizes: list[int], seconds: float, rounds: int, window: int, tmp: Path) -> list[dict[str, Any]]:
    out = []
    for size in sizes:
        features = max(1, size // 4)
        export = trivial_export(tmp / f"trivial-{size}", features)
        message = _agent_request(export)
        serve, port = start_serve(export, [])
        try:
            reply_bytes = _reply_bytes(port, message)
            echo, echo_port = start_echo(tmp, reply_bytes)
            try:
                runs: dict[str, list[dict[str, Any]]] = {"echo": [], "agent": [], "bare_client_serve": []}
                echo_cpu, serve_cpu = Cpu(echo.pid), Cpu(serve.pid)
                for _ in range(rounds):
                    runs["echo"].append(echo_round(echo_port, message, window, seconds, echo_cpu))
                    runs["agent"].append(agent_round(export, port, window, seconds, cpu=serve_cpu))
                    # diagnosis: serve with the bare client (is the server or the agent the limit?)
                    runs["bare_client_serve"].append(echo_round(port, message, window, seconds, serve_cpu))
            finally:
                stop(echo)
        finally:
            stop(serve)
        echo_fps = float(np.median([r["fps"] for r in runs["echo"]]))
        agent_fps = float(np.median([r["fps"] for r in runs["agent"]]))
        serve_fps = float(np.median([r["fps"] for r in runs["bare_client_serve"]]))
        best = max(runs["agent"], key=lambda r: r["fps"])
        out.append(
            {
                "size_bytes": size,
                "message_bytes": len(message),
                "reply_bytes": reply_bytes,
                "window": window,
                "echo_fps": echo_fps,
                "agent_fps": agent_fps,
                "echo_MiB_s": echo_fps * len(message) / MIB,
                "agent_goodput_MiB_s": agent_fps * best["payload_bytes_per_frame"] / MIB,
                "ratio": agent_fps / echo_fps,
                "bare_client_serve_fps": serve_fps,
                "serve_ratio": serve_fps / echo_fps,
                "ratios_per_round": [
                    a["fps"] / e["fps"] for a, e in zip(runs["agent"], runs["echo"], strict=True)
                ],
                "lost": sum(r["lost"] for r in runs["agent"]),
                "failed": sum(r["failed"] for r in runs["agent"]),
                "agent_e2e_ms": best["e2e_ms"],
                # medians over rounds, measured (psutil): this process is the client side
                "cpu_us_per_message": {
                    k: {
                        side: float(np.median([r[f"{side}_cpu_us"] for r in v]))
                        for side in ("client", "server")
                    }
                    for k, v in runs.items()
                },
                "rounds": {
                    k: [{x: y for x, y in r.items() if x != "report"} for r in v] for k, v in runs.items()
                },
            }
        )
        r = out[-1]
        print(
            f"  {size:>9,} B: echo {echo_fps:8.0f} msg/s {r['echo_MiB_s']:7.1f} MiB/s | agent+serve {agent_fps:8.0f} "
            f"fps {r['agent_goodput_MiB_s']:7.1f} MiB/s | ratio {r['ratio']:.2f} "
            f"(rounds {', '.join(f'{x:.2f}' for x in r['ratios_per_round'])}), lost {r['lost']} | "
            f"bare client + serve {serve_fps:.0f} msg/s, ratio {r['serve_ratio']:.2f}",
            flush=True,
        )
        c = r["cpu_us_per_message"]
        print(
            "             CPU us per message, client / server: echo {:.0f} / {:.0f} | agent + serve {:.0f} / {:.0f}"
            " | bare client + serve {:.0f} / {:.0f}".format(
                *(c[k][side] for k in ("echo", "agent", "bare_client_serve") for side in ("client", "server"))
            ),
            flush=True,
        )
    return out


def part_b(model: str, codec: str, seconds: float, rounds: int, window: int, tmp: Path) -> dict[str, Any]:
    print(f"  planning and exporting the middle split of {model} ({codec}) ...", flush=True)
    export, info = middle_split(model, tmp / "real", codec)
    print(
        f"  split {info['split']} after {info['label']}: planned head {info['planned_head_ms']:.2f} ms, "
        f"tail {info['planned_tail_ms']:.2f} ms",
        flush=True,
    )
    serve, port = start_serve(export, [])
    try:
        agent_round(export, port, window, 1.0)  # warm-up
        runs = [agent_round(export, port, window, seconds) for _ in range(rounds)]
    finally:
        stop(serve)
    for r in runs:
        b = r["bound"]
        print(
            f"  {r['fps']:7.1f} fps, slowest stage {b['stage']} {b['fps']:.1f} fps (stages "
            + ", ".join(f"{k} {v:.2f} ms" for k, v in b["stage_ms"].items())
            + f"): {r['achieved_fraction']:.3f} of it; e2e p50 {r['e2e_ms']['p50']:.1f} ms, lost {r['lost']}",
            flush=True,
        )
    fractions = [r["achieved_fraction"] for r in runs]
    return {
        **info,
        "window": window,
        "fps": float(np.median([r["fps"] for r in runs])),
        "achieved_fraction": float(np.median(fractions)),
        "fractions_per_round": fractions,
        "lost": sum(r["lost"] for r in runs),
        "rounds": [{x: y for x, y in r.items() if x != "report"} for r in runs],
    }


async def _client_round(port: int, export: Path, window: int, seconds: float) -> dict[str, float]:
    """Our StreamClient alone: each frame's request built by the agent's RequestBuilder (its id
    differs per frame), no head, no records."""
    from splitpipe.edge import SyntheticSource, load_export
    from splitpipe.edge.wire import RequestBuilder

    e = load_export(export)
    builder = RequestBuilder(e)
    outputs = {e.cut[0].name: SyntheticSource(e.inputs).frame(0)[e.inputs[0].name]}
    answered = 0

    def on_reply(entry: Any, reply: Any, arrived: float) -> None:
        nonlocal answered
        answered += 1

    client = StreamClient(f"127.0.0.1:{port}", e.name, on_reply, ClientOptions(window=window))
    await client.start()
    sent = 0

    async def pump(until: float) -> None:
        nonlocal sent
        while time.perf_counter() < until:
            sent += 1
            await client.send(str(sent), builder.build(str(sent), outputs).data)

    await pump(time.perf_counter() + min(0.5, seconds / 3))
    before, done_before, start = time.process_time(), answered, time.perf_counter()
    await pump(start + seconds)
    n = answered - done_before
    result = {
        "fps": n / (time.perf_counter() - start),
        "client_cpu_us": (time.process_time() - before) / n * 1e6,
    }
    await client.drain(30)
    await client.close()
    return result


def _agent_cpu_round(
    export: Path, port: int, window: int, seconds: float, head: str, cpu: Cpu
) -> dict[str, float]:
    """:func:`agent_round` with the head as exported ("runtime") or its runtime call replaced
    ("hand-through", "sleep0"): steady-state frames/s and this process's CPU per frame."""
    from splitpipe.devices.runtimes.ort import OrtRunner
    from splitpipe.edge import load_export

    e = load_export(export)
    name_in, name_out = e.inputs[0].name, e.cut[0].name
    original = OrtRunner.infer

    def hand_through(self: Any, feed: dict[str, np.ndarray], *, check: bool = True) -> dict[str, np.ndarray]:
        if head == "sleep0":
            time.sleep(0)  # releases the GIL and takes it back, as ONNX Runtime's run() does
        return {name_out: feed[name_in]}

    if head != "runtime":
        OrtRunner.infer = hand_through  # type: ignore[method-assign]
    try:
        r = agent_round(export, port, window, seconds, cpu=cpu)
    finally:
        OrtRunner.infer = original  # type: ignore[method-assign]
    return {"fps": r["steady_fps"], "client_cpu_us": r["client_cpu_us"]}


def part_c(seconds: float, rounds: int, window: int, tmp: Path) -> dict[str, Any]:
    export = trivial_export(tmp / "trivial-c", 2500)
    serve, port = start_serve(export, [])
    cpu = Cpu(serve.pid)
    kinds: dict[str, Any] = {
        "stream client alone": lambda: asyncio.run(_client_round(port, export, window, seconds)),
        "agent": lambda: _agent_cpu_round(export, port, window, seconds, "runtime", cpu),
        "agent, head call handed through": lambda: _agent_cpu_round(
            export, port, window, seconds, "hand-through", cpu
        ),
        "agent, head call = sleep(0)": lambda: _agent_cpu_round(export, port, window, seconds, "sleep0", cpu),
    }
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    try:
        for _ in range(rounds):
            for kind, fn in kinds.items():
                runs[kind].append(fn())
    finally:
        stop(serve)
    return _cpu_medians(runs, "client", "fps", "frame")


SERVE_VARIANTS = {
    "serve": "",
    "serve, tail call in numpy": "numpy-tail",
    "serve, first response reused": "canned",
}


def _serve_variant(variant: str, argv: list[str]) -> int:
    """``splitpipe serve`` with part (s)'s change (a diagnosis only: what the server's request
    path costs under load)."""
    from splitpipe import cli
    from splitpipe.devices.runtimes.ort import OrtRunner
    from splitpipe.server.servicer import InferenceServicer

    if variant == "numpy-tail":  # ReduceMax over axis 1 without a runtime call (keeps the GIL)

        def reduce_max(self: Any, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            (x,) = feed.values()
            return {self.outputs[0].name: x.max(axis=1, keepdims=True)}

        OrtRunner._infer = reduce_max  # type: ignore[method-assign]
    elif variant == "canned":
        original = InferenceServicer._submit
        first: list[Any] = []

        def canned(self: Any, data: bytes, arrived: float) -> Any:
            if not first:
                first.append(original(self, data, arrived))
            return first[0]

        InferenceServicer._submit = canned  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown serve variant {variant!r}")
    return cli.main(argv)


def _request_path_alone(export: Path, message: bytes, n: int = 20000) -> float:
    """CPU per request of the server's request path (parse, check, run the tail on the event
    loop, build the response) called directly, with no gRPC traffic: microseconds."""
    from splitpipe.server.app import create_server

    async def run() -> float:
        server, _ = await create_server("127.0.0.1:0", [export])
        await server.start()
        try:
            submit = server._servicer._submit
            for _ in range(200):
                submit(message, time.perf_counter())
            start = time.thread_time()
            for _ in range(n):
                submit(message, time.perf_counter())
            return (time.thread_time() - start) / n * 1e6
        finally:
            await server.stop(0)

    return asyncio.run(run())


def part_s(seconds: float, rounds: int, window: int, tmp: Path) -> dict[str, Any]:
    export = trivial_export(tmp / "trivial-s", 2500)
    message = _agent_request(export)
    alone = _request_path_alone(export, message)
    print(f"  request path alone (no traffic): {alone:.1f} us of CPU per request", flush=True)
    servers: dict[str, tuple[subprocess.Popen[str], int]] = {}
    out: dict[str, Any] = {"request_path_alone_us": alone}
    try:
        for kind, variant in SERVE_VARIANTS.items():
            servers[kind] = start_serve(export, [], variant)
        servers["echo server"] = start_echo(tmp, _reply_bytes(servers["serve"][1], message))
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in servers}
        for _ in range(rounds):
            for kind, (proc, port) in servers.items():
                runs[kind].append(echo_round(port, message, window, seconds, Cpu(proc.pid)))
    finally:
        for proc, _ in servers.values():
            stop(proc)
    return {**out, **_cpu_medians(runs, "server", "msg/s", "request")}


def _cpu_medians(runs: dict[str, list[dict[str, float]]], side: str, rate: str, per: str) -> dict[str, Any]:
    """Per kind of run: the medians of its rounds' rate and ``side``'s CPU per ``per``, printed."""
    out: dict[str, Any] = {}
    for kind, rs in runs.items():
        fps = float(np.median([r["fps"] for r in rs]))
        cpu = float(np.median([r[f"{side}_cpu_us"] for r in rs]))
        out[kind] = {"fps": fps, f"{side}_cpu_us": cpu, "rounds": rs}
        per_round = ", ".join(f"{r[f'{side}_cpu_us']:.0f}" for r in rs)
        print(
            f"  {kind:34s} {fps:7.0f} {rate}, {side} CPU {cpu:4.0f} us per {per} (rounds {per_round})",
            flush=True,
        )
    return out


def part_tls(sizes: list[int], seconds: float, rounds: int, window: int, tmp: Path) -> list[dict[str, Any]]:
    from splitpipe.tls import ClientTls
    from tests.fixtures.certs import CertificateAuthority

    ca = CertificateAuthority(tmp / "pki")
    cert = ca.issue("server", "bench", ("127.0.0.1",))
    out = []
    for size in sizes:
        export = trivial_export(tmp / f"tls-{size}", max(1, size // 4))
        plain, plain_port = start_serve(export, [])
        secure, secure_port = start_serve(export, ["--tls-cert", str(cert.cert), "--tls-key", str(cert.key)])
        try:
            runs: dict[str, list[dict[str, Any]]] = {"plaintext": [], "tls": []}
            for _ in range(rounds):
                runs["plaintext"].append(agent_round(export, plain_port, window, seconds, cpu=Cpu(plain.pid)))
                runs["tls"].append(
                    agent_round(
                        export,
                        secure_port,
                        window,
                        seconds,
                        cpu=Cpu(secure.pid),
                        tls=ClientTls(ca=ca.pem.cert),
                    )
                )
        finally:
            stop(plain)
            stop(secure)
        entry: dict[str, Any] = {"size_bytes": size, "window": window}
        for kind, rs in runs.items():
            entry[kind] = {
                "fps": float(np.median([r["steady_fps"] for r in rs])),
                "client_cpu_us": float(np.median([r["client_cpu_us"] for r in rs])),
                "server_cpu_us": float(np.median([r["server_cpu_us"] for r in rs])),
                "lost": sum(r["lost"] for r in rs),
            }
        entry["fps_ratio"] = entry["tls"]["fps"] / entry["plaintext"]["fps"]
        entry["ratios_per_round"] = [
            t["steady_fps"] / p["steady_fps"] for p, t in zip(runs["plaintext"], runs["tls"], strict=True)
        ]
        out.append(entry)
        p, t = entry["plaintext"], entry["tls"]
        print(
            f"  {size:>9,} B: plaintext {p['fps']:7.0f} fps, CPU/frame client {p['client_cpu_us']:.0f} us server "
            f"{p['server_cpu_us']:.0f} us | TLS {t['fps']:7.0f} fps, client {t['client_cpu_us']:.0f} us server "
            f"{t['server_cpu_us']:.0f} us | TLS/plaintext fps {entry['fps_ratio']:.2f} "
            f"(rounds {', '.join(f'{x:.2f}' for x in entry['ratios_per_round'])}), lost {p['lost'] + t['lost']}",
            flush=True,
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["a", "b", "c", "s", "tls", "both"], default="both")
    parser.add_argument("--sizes", default="10000,1000000", help="tensor sizes for part a, bytes")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (medians reported)")
    parser.add_argument("--window", type=int, default=8, help="frames in flight (both clients)")
    parser.add_argument("--model", default="torchvision:mobilenet_v3_small", help="model of part b")
    parser.add_argument("--codec", default="int8", help="codec of part b")
    parser.add_argument("--json", type=Path, help="results file (default bench/results/pipeline-TIME.json)")
    parser.add_argument("--echo-server", help=argparse.SUPPRESS)
    parser.add_argument("--reply-bytes", type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument("--inputs", default="", help=argparse.SUPPRESS)
    parser.add_argument("--serve-variant", help=argparse.SUPPRESS)
    if "--serve-variant" in sys.argv[1:2]:  # part (s)'s server: the rest is serve's command line
        return _serve_variant(sys.argv[2], sys.argv[4:])
    args = parser.parse_args()
    if args.echo_server:
        asyncio.run(_echo_main(args.echo_server, args.reply_bytes, args.inputs))
        return 0
    logging.basicConfig(level=logging.WARNING)
    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} on {os.cpu_count()} cores", flush=True)
    result: dict[str, Any] = {
        "measured": True,
        "load_before": load_before,
        "cpus": os.cpu_count(),
        "argv": sys.argv,
    }
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("a", "both"):
            print(
                f"(a) agent + serve with a trivial tail vs a bare grpcio echo stream, window {args.window}",
                flush=True,
            )
            result["a"] = part_a(
                [int(s) for s in args.sizes.split(",")], args.seconds, args.rounds, args.window, Path(tmp)
            )
        if args.part in ("b", "both"):
            print(
                f"(b) pipelined throughput of a real split vs its slowest stage, window {args.window}",
                flush=True,
            )
            result["b"] = part_b(args.model, args.codec, args.seconds, args.rounds, args.window, Path(tmp))
        if args.part == "tls":
            print(f"(t) agent + serve, plaintext against TLS, window {args.window}", flush=True)
            result["tls"] = part_tls(
                [int(s) for s in args.sizes.split(",")], args.seconds, args.rounds, args.window, Path(tmp)
            )
        if args.part == "c":
            print(f"(c) where the agent's CPU per 10 KB frame goes, window {args.window}", flush=True)
            result["c"] = part_c(args.seconds, args.rounds, args.window, Path(tmp))
        if args.part == "s":
            print(f"(s) where the server's CPU per 10 KB request goes, window {args.window}", flush=True)
            result["s"] = part_s(args.seconds, args.rounds, args.window, Path(tmp))
    result["load_after"] = os.getloadavg()
    print(f"load average after: {result['load_after'][0]:.2f}")
    path = args.json or RESULTS / f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str))
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
