#!/usr/bin/env python
"""`splitpipe serve` with a trivial tail against a bare grpcio echo server, side by side.

Both servers run as separate processes on loopback and answer the same client, which keeps a
window of requests in flight on one ModelStreamInfer stream. The echo server does no protobuf
work at all: it reads each request as bytes and answers with a pre-serialized response of the
size our server sends. The ratio (ours / echo) is the server's share of the target that
bench/pipeline.py checks end to end (>= 0.7 for 10 KB and 1 MB messages).

    .venv/bin/python bench/server_echo.py                  # 10 KB and 1 MB, 3 s each
    .venv/bin/python bench/server_echo.py --sizes 10000 --seconds 5 --window 16 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
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

sys.path.insert(0, str(REPO / "bench"))

# the trivial export, the echo server and process handling are bench/pipeline.py's
from pipeline import GRPC_OPTIONS, MIB, start_echo, start_serve, trivial_export  # noqa: E402
from pipeline import stop as stop_process  # noqa: E402

from splitpipe.proto.inference import grpc_service_pb2 as pb  # noqa: E402
from splitpipe.proto.inference import grpc_service_pb2_grpc as pb_grpc  # noqa: E402

# -- the client ------------------------------------------------------------------------------


def drive(port: int, request: pb.ModelInferRequest, seconds: float, window: int) -> dict[str, float]:
    """Messages per second over one stream with ``window`` requests in flight."""
    blob_size = request.ByteSize()
    in_flight = threading.Semaphore(window)
    stop = threading.Event()
    sent = 0

    def requests() -> Any:
        nonlocal sent
        while not stop.is_set():
            in_flight.acquire()
            if stop.is_set():
                return
            sent += 1
            yield request

    with grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        # warm up: connection, first tail run
        list(stub.ModelStreamInfer(iter([request] * 8), timeout=60))
        received, errors = 0, 0
        start = time.perf_counter()
        responses = stub.ModelStreamInfer(requests(), timeout=seconds + 60)
        for response in responses:
            received += 1
            errors += bool(response.error_message)
            in_flight.release()
            if time.perf_counter() - start >= seconds:
                break
        elapsed = time.perf_counter() - start
        stop.set()
        in_flight.release()
        responses.cancel()
    return {
        "messages_per_s": received / elapsed,
        "MiB_per_s": received * blob_size / elapsed / MIB,
        "errors": errors,
        "messages": received,
        "request_bytes": blob_size,
    }


def run_size(size: int, seconds: float, window: int, serve_args: list[str], rounds_n: int) -> dict[str, Any]:
    features = max(1, size // 4)
    x = np.random.default_rng(0).standard_normal((1, features)).astype(np.float32)
    request = pb.ModelInferRequest(model_name=f"trivial-{features}")  # trivial_export's name
    request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    with tempfile.TemporaryDirectory() as tmp:
        export = trivial_export(Path(tmp) / "trivial", features)
        ours, port = start_serve(export, serve_args)
        try:
            # the echo answers with a response of our server's size
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=GRPC_OPTIONS) as channel:
                sample = next(pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter([request])))
            reply_bytes = len(sample.infer_response.raw_output_contents[0])
            echo, echo_port = start_echo(Path(tmp), reply_bytes)
            try:
                # short alternating rounds, so that a busy machine affects both alike
                rounds: dict[str, list[dict[str, float]]] = {"echo": [], "serve": []}
                procs = {"echo": psutil.Process(echo.pid), "serve": psutil.Process(ours.pid)}
                ports = {"echo": echo_port, "serve": port}
                for _ in range(rounds_n):
                    for name in ("echo", "serve"):
                        cpu = procs[name].cpu_times()
                        r = drive(ports[name], request, seconds / rounds_n, window)
                        after = procs[name].cpu_times()
                        used = (after.user + after.system) - (cpu.user + cpu.system)
                        r["server_cpu_us_per_msg"] = used / max(r["messages"], 1) * 1e6
                        rounds[name].append(r)
            finally:
                stop_process(echo)
        finally:
            stop_process(ours)
    result: dict[str, Any] = {"size_bytes": size, "window": window, "seconds": seconds, "measured": True}
    for name, runs in rounds.items():
        result[name] = {
            "messages_per_s": float(np.median([r["messages_per_s"] for r in runs])),
            "MiB_per_s": float(np.median([r["MiB_per_s"] for r in runs])),
            "server_cpu_us_per_msg": float(np.median([r["server_cpu_us_per_msg"] for r in runs])),
            "errors": int(sum(r["errors"] for r in runs)),
            "rounds": runs,
        }
    result["ratio"] = result["serve"]["messages_per_s"] / result["echo"]["messages_per_s"]
    result["cpu_ratio"] = result["echo"]["server_cpu_us_per_msg"] / result["serve"]["server_cpu_us_per_msg"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", default="10000,1000000", help="request tensor sizes in bytes, comma-separated"
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="measuring time per server and size")
    parser.add_argument(
        "--rounds", type=int, default=6, help="alternating rounds per server (medians reported)"
    )
    parser.add_argument("--window", type=int, default=8, help="requests in flight on the stream")
    parser.add_argument(
        "--serve-args", default="", help="extra `splitpipe serve` flags, e.g. '--max-batch 1'"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    results = []
    print(
        f"{'size':>10} {'echo msg/s':>11} {'serve msg/s':>12} {'echo MiB/s':>11} {'serve MiB/s':>12} {'ratio':>6}"
        f" {'echo cpu us':>12} {'serve cpu us':>13} {'cpu ratio':>9}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        r = run_size(size, args.seconds, args.window, args.serve_args.split(), args.rounds)
        results.append(r)
        print(
            f"{size:>10} {r['echo']['messages_per_s']:>11.0f} {r['serve']['messages_per_s']:>12.0f} "
            f"{r['echo']['MiB_per_s']:>11.1f} {r['serve']['MiB_per_s']:>12.1f} {r['ratio']:>6.2f}"
            f" {r['echo']['server_cpu_us_per_msg']:>12.0f} {r['serve']['server_cpu_us_per_msg']:>13.0f}"
            f" {r['cpu_ratio']:>9.2f}"
            + (f"  ({r['serve']['errors']} errors)" if r["serve"]["errors"] else "")
        )
    if args.json:
        args.json.write_text(json.dumps({"results": results, "load_avg": os.getloadavg()}, indent=2))
    print(f"(measured on loopback; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
