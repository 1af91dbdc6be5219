"""``splitpipe agent EXPORT_DIR --server HOST:PORT``: the on-device daemon (head, codec, stream)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

_MIB = 1 << 20


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "agent",
        help="run the head on this device and stream the cut to `splitpipe serve`",
        description=(
            "Capture frames, run the head of an export with ONNX Runtime, compress the cut tensors "
            "with the manifest's codec and stream them over one gRPC stream to `splitpipe serve`, "
            "with a window of frames in flight. Runs until --frames, the end of the source, or "
            "SIGTERM/SIGINT, then finishes the frames in flight and exits 0 (1 if frames got no "
            "reply). A `local` export runs the whole model here, with no server. See docs/agent.md."
        ),
    )
    parser.add_argument(
        "export_dirs",
        nargs="+",
        type=Path,
        metavar="EXPORT_DIR",
        help="written by splitpipe export; several exports of one model: choose the split per frame",
    )
    parser.add_argument(
        "--server", metavar="HOST:PORT", help="address of splitpipe serve (not for a local export)"
    )
    parser.add_argument(
        "--source",
        nargs="+",
        default=["synthetic"],
        metavar="SRC",
        help="synthetic (default), images DIR, video FILE, or camera N",
    )
    parser.add_argument("--loop", action="store_true", help="start images and video files over at their end")
    parser.add_argument(
        "--frames", type=int, metavar="N", help="stop after N frames (default: run until stopped)"
    )
    parser.add_argument("--fps", type=float, metavar="F", help="capture at most F frames per second")
    parser.add_argument(
        "--window", type=int, default=4, metavar="W", help="frames sent and not yet answered (default 4)"
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="capture the next frame only after the previous result (latency, not throughput)",
    )
    parser.add_argument("--report", type=Path, metavar="FILE", help="write the agent report (JSON) here")
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="PNG",
        help="draw the run (latency per frame, stages, throughput; needs matplotlib) to this file",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="K",
        help="head intra-op threads; 0 lets ONNX Runtime choose",
    )
    parser.add_argument("--runtime", default="ort", help="runner of the head: ort or trt (default ort)")
    parser.add_argument("--providers", default="cpu", help="ONNX Runtime execution providers (default cpu)")
    parser.add_argument(
        "--no-compiled",
        dest="use_compiled",
        action="store_false",
        help="run head.onnx even where `splitpipe compile` wrote a head for this runtime",
    )
    parser.add_argument(
        "--log-interval",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between log lines; 0: off (default 5)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        metavar="S",
        help="give up when no server answers for S seconds (default: keep retrying)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="on stop, seconds frames in flight may take (default 30)",
    )
    parser.add_argument(
        "--device-profile",
        metavar="NAME",
        help="profile whose power figures estimate energy where no sensor exists (e.g. rpi4)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of synthetic frames (default 0)")
    parser.add_argument(
        "--max-message-mb", type=int, default=256, help="gRPC message size limit, MiB (default 256)"
    )
    parser.add_argument(
        "--probe-interval",
        type=float,
        default=2.0,
        metavar="S",
        help="with several exports: send a frame through each idle split every S seconds (default 2)",
    )
    parser.add_argument(
        "--hysteresis",
        type=float,
        default=0.15,
        metavar="F",
        help="with several exports: switch when another split is predicted F faster (default 0.15)",
    )
    parser.add_argument(
        "--tls", action="store_true", help="connect over TLS, verifying the server against the system's roots"
    )
    parser.add_argument(
        "--tls-ca", type=Path, metavar="PEM", help="connect over TLS, verifying the server against this CA"
    )
    parser.add_argument("--tls-cert", type=Path, metavar="PEM", help="mutual TLS: the agent's certificate")
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="mutual TLS: the key of --tls-cert")
    parser.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="the name the server's certificate must carry, when it differs from the host dialled",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from splitpipe.edge import Agent, AgentOptions, ClientOptions, parse_source
    from splitpipe.edge.adapt import AdaptOptions
    from splitpipe.errors import SplitpipeError
    from splitpipe.tls import ClientTls

    if args.threads < 0:
        raise SplitpipeError(f"--threads must be >= 0 (0 lets the runtime choose), got {args.threads}")
    if args.plot is not None:  # checked now: a plot that cannot be drawn at the end would be lost
        from splitpipe.errors import check_plot_file

        check_plot_file(args.plot, example="run.png")
        if args.report is not None and args.plot.resolve() == args.report.resolve():
            raise SplitpipeError(
                f"--plot and --report name the same file ({args.plot}); the plot would overwrite the "
                "report: give two names, such as run.png and report.json"
            )
    tls = None
    if args.tls or args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name:
        tls = ClientTls(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
    options = AgentOptions(
        export_dir=args.export_dirs[0],
        more_exports=tuple(args.export_dirs[1:]),
        adapt=AdaptOptions(probe_s=args.probe_interval, hysteresis=args.hysteresis),
        server=args.server,
        source=parse_source(args.source, loop=args.loop, seed=args.seed),
        frames=args.frames,
        fps=args.fps,
        threads=args.threads or None,
        runtime=args.runtime,
        providers=tuple(p.strip() for p in args.providers.split(",") if p.strip()),
        client=ClientOptions(
            window=args.window,
            connect_timeout_s=args.connect_timeout,
            max_message_bytes=args.max_message_mb * _MIB,
            tls=tls,
        ),
        log_interval_s=args.log_interval,
        drain_timeout_s=args.drain_timeout,
        device_profile=args.device_profile,
        report=args.report,
        sequential=args.sequential,
        use_compiled=args.use_compiled,
    )
    agent = Agent(options)
    report = asyncio.run(agent.run(handle_signals=True))
    for line in report.lines():
        print(line)
    heads, names = report.info["head"], report.info["name"]
    if not isinstance(heads, list):  # one export
        heads, names = [heads], [None]
    for head, name in zip(heads, names, strict=True):  # with several: one line per compiled head
        if head and head.get("compiled"):
            c = head["compiled"]
            runs = f"{name} runs " if name else ""
            print(f"head: {runs}the compiled {head['file']} ({c['target']}, {c['precision']})")
    if args.report:
        print(f"report written to {args.report}")
    if args.plot is not None:
        from splitpipe.edge.plot import plot_report

        print(f"plot written to {plot_report(report.to_json(), args.plot)}")
    if report.lost:
        print(
            f"splitpipe agent: {report.lost} frame(s) lost: no reply before the end "
            "(--drain-timeout passed, or a second signal abandoned them)",
            file=sys.stderr,
        )
        return 1
    return 0
