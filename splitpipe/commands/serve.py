"""``splitpipe serve EXPORT_DIR [EXPORT_DIR ...]``: serve exported tails over gRPC (KServe v2)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

_MIB = 1 << 20


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve exported tails over the Open Inference Protocol (KServe v2 gRPC)",
        description=(
            "Load the tail of each export directory (sha256 checked) and serve it under the "
            "manifest's name until SIGTERM or SIGINT, then finish the requests in flight and exit 0. "
            "Clients: `splitpipe agent`, or any KServe v2 / Triton gRPC client. See docs/server.md."
        ),
    )
    parser.add_argument(
        "export_dirs", nargs="+", type=Path, metavar="EXPORT_DIR", help="written by splitpipe export"
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all, 0.0.0.0)")
    parser.add_argument("--port", type=int, default=8001, help="gRPC port (default 8001; 0 picks a free one)")
    parser.add_argument(
        "--max-batch",
        type=int,
        default=8,
        metavar="N",
        help="most rows per tail run; 1 turns batching off (default 8)",
    )
    parser.add_argument(
        "--batch-timeout-us",
        type=int,
        default=0,
        metavar="T",
        help="how long a batch waits for more requests, microseconds (default 0: batch only what is queued)",
    )
    parser.add_argument("--runtime", default="ort", help="runner of the tails: ort or trt (default ort)")
    parser.add_argument(
        "--no-compiled",
        dest="use_compiled",
        action="store_false",
        help="run tail.onnx even where `splitpipe compile` wrote a tail for this runtime",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="K",
        help="intra-op threads per tail; 0 lets the runtime choose (default 1)",
    )
    parser.add_argument(
        "--providers", default="cpu", help="ONNX Runtime execution providers, comma-separated (default cpu)"
    )
    parser.add_argument("--instances", type=int, default=1, help="tail runs of one model at once (default 1)")
    parser.add_argument(
        "--max-message-mb", type=int, default=256, help="gRPC message size limit, MiB (default 256)"
    )
    parser.add_argument(
        "--max-tensor-mb",
        type=int,
        default=256,
        help="largest decoded tensor a request may claim, MiB (default 256)",
    )
    parser.add_argument(
        "--grace", type=float, default=10.0, help="seconds to finish requests on shutdown (default 10)"
    )
    parser.add_argument(
        "--log-interval",
        type=float,
        default=10.0,
        help="seconds between rate/latency log lines; 0: off (default 10)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (default: off)",
    )
    parser.add_argument(
        "--ray",
        action="store_true",
        help="run the tails on Ray Serve replicas (the ray extra; docs/server.md)",
    )
    parser.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="with --ray: join this Ray cluster (auto, or HOST:PORT); default: start Ray on this machine",
    )
    parser.add_argument(
        "--replicas", type=int, default=2, help="with --ray: replicas of each tail (default 2)"
    )
    parser.add_argument(
        "--replica-cpus", type=float, default=1.0, help="with --ray: CPUs each replica asks for (default 1)"
    )
    parser.add_argument(
        "--replica-gpus", type=float, default=0.0, help="with --ray: GPUs each replica asks for (default 0)"
    )
    parser.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve over TLS with this certificate")
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="the private key of --tls-cert")
    parser.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="PEM",
        help="mutual TLS: accept only clients with a certificate signed by this CA",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from splitpipe.errors import SplitpipeError
    from splitpipe.server import InferenceServer, ServerOptions, serve
    from splitpipe.server.options import RayOptions
    from splitpipe.tls import ServerTls

    for what, port in (("port", args.port), ("--metrics-port", args.metrics_port)):
        if port is not None and not 0 <= port <= 65535:
            raise SplitpipeError(f"{what} must be 0..65535, got {port}")
    if args.threads < 0:
        raise SplitpipeError(f"threads must be >= 0 (0 lets the runtime choose), got {args.threads}")
    tls = None
    if args.tls_cert or args.tls_key or args.tls_client_ca:
        if not (args.tls_cert and args.tls_key):
            raise SplitpipeError("TLS needs both --tls-cert and --tls-key")
        tls = ServerTls(args.tls_cert, args.tls_key, args.tls_client_ca)
    ray = None
    if args.ray:
        ray = RayOptions(args.ray_address, args.replicas, args.replica_cpus, args.replica_gpus)
    elif args.ray_address:
        raise SplitpipeError("--ray-address goes with --ray")
    options = ServerOptions(
        max_batch=args.max_batch,
        batch_timeout_us=args.batch_timeout_us,
        runtime=args.runtime,
        threads=args.threads or None,
        providers=tuple(p.strip() for p in args.providers.split(",") if p.strip()),
        instances=args.instances,
        max_message_bytes=args.max_message_mb * _MIB,
        max_tensor_bytes=args.max_tensor_mb * _MIB,
        grace_s=args.grace,
        log_interval_s=args.log_interval,
        tls=tls,
        ray=ray,
        metrics_port=args.metrics_port,
        use_compiled=args.use_compiled,
    )
    host = _check_host(args.host)

    def ready(server: InferenceServer) -> None:
        # One line on stdout that scripts (and the tests) read; logs go to stderr.
        models = ", ".join(sorted(server.models))
        scheme = "" if tls is None else (" over TLS" if tls.client_ca is None else " over mutual TLS")
        print(f"splitpipe serve: listening on {host}:{server.port}{scheme} ({models})", flush=True)
        sys.stdout.flush()

    return asyncio.run(serve(f"{host}:{args.port}", args.export_dirs, options, on_ready=ready))


def _check_host(text: str) -> str:
    """``--host``: an address or name of this machine, bracketed for gRPC when IPv6. An empty
    one, a port or a scheme would reach gRPC as a garbled address (its log line and "Failed to bind")."""
    import ipaddress

    from splitpipe.errors import SplitpipeError

    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    ok = bool(bare) and "/" not in bare and not any(c.isspace() for c in bare) and "[" not in bare
    if ok and ":" in bare:
        try:
            ipaddress.IPv6Address(bare)
        except ValueError:
            ok = False
    if not ok:
        raise SplitpipeError(
            f"--host must be an address or name of this machine, such as 0.0.0.0, 127.0.0.1, :: or a "
            f"host name (the port goes in --port), got {text!r}"
        )
    return f"[{bare}]" if ":" in bare else bare
