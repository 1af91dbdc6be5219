"""``splitpipe bench``: reproducible experiments on the emulated testbed.

``splitpipe bench sweep MODEL`` plans a model on the testbed, then streams the baselines and the
planner's splits at several link rates and sets the measured latency beside the prediction
(docs/testbed.md, "Sweep"); ``splitpipe bench report SWEEP.json`` shows a recorded sweep again.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

DEFAULT_LINKS = "2mbit,10mbit,50mbit"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measured experiments on the emulated testbed: planner against reality",
        description="Reproducible experiments on the emulated testbed (docs/testbed.md).",
    )
    sub = parser.add_subparsers(dest="bench_command", metavar="COMMAND", required=True)

    sweep = sub.add_parser(
        "sweep",
        help="plan on the testbed, then measure the baselines and the planner's splits at several link rates",
        description=(
            "Build a testbed; plan MODEL with times measured on its throttled device side and its "
            "server side; for each link rate, measure the link, plan for it, and stream local-only, "
            "full offload (raw, and as JPEG for picture inputs), every Pareto candidate and the "
            "planner's pick through `splitpipe serve` and `splitpipe agent`, one frame at a time. "
            "Writes sweep.json, a table and two plots. Needs root."
        ),
    )
    sweep.add_argument("model", help="torchvision:NAME, package.module:callable, or path/to/model.onnx")
    sweep.add_argument("--input-shape", help="e.g. 1,3,224,224 (default for torch models: 1,3,224,224)")
    sweep.add_argument("--weights", help="a local state_dict file for a torch model")
    sweep.add_argument(
        "--links", default=DEFAULT_LINKS, help=f"link rates, comma-separated (default {DEFAULT_LINKS})"
    )
    sweep.add_argument("--rtt", default="20ms", help="round-trip time of every link (default 20ms)")
    sweep.add_argument(
        "--device-cpu", default="0.25", help="device CPU share, 0.25 or 25%% of one core (default 0.25)"
    )
    sweep.add_argument("--codec", default="auto", help="bottleneck codec, or auto (default auto)")
    sweep.add_argument(
        "--max-error",
        type=float,
        help="for --codec auto: largest relative L2 error at the cut (default 0.01)",
    )
    sweep.add_argument(
        "--objectives",
        default="latency,bytes",
        help="objectives of the Pareto front, with latency (default latency,bytes)",
    )
    sweep.add_argument(
        "--frames",
        type=int,
        metavar="N",
        help="frames per run after the warm-up (default: from the run's predicted latency, "
        "--run-seconds of streaming, at least --min-frames, at most --max-frames)",
    )
    sweep.add_argument("--min-frames", type=int, default=8, help="fewest frames per run (default 8)")
    sweep.add_argument("--max-frames", type=int, default=30, help="most frames per run (default 30)")
    sweep.add_argument(
        "--run-seconds", type=float, default=4.0, help="streaming time aimed at per run (default 4)"
    )
    sweep.add_argument(
        "--warmup-frames", type=int, default=1, help="frames streamed first and not counted (default 1)"
    )
    sweep.add_argument(
        "--pipelined",
        type=int,
        metavar="N",
        help="also stream every export with N frames in flight (the agent's --window) and hold its "
        "frames/s against the plan's (about --run-seconds each, at most 400 frames)",
    )
    sweep.add_argument(
        "--images",
        type=Path,
        metavar="DIR",
        help="pictures to stream and calibrate codecs on (default: crops of scikit-learn's sample photos)",
    )
    sweep.add_argument(
        "--calibration-samples", type=int, default=2, help="pictures codecs are calibrated on (default 2)"
    )
    sweep.add_argument(
        "--out",
        type=Path,
        help="results folder (default ./sweep-MODEL-TIME): sweep.json, plots, plans, reports",
    )
    sweep.add_argument("--keep-exports", action="store_true", help="keep the exports in OUT/exports")
    sweep.add_argument("--name", default="sweep", help="testbed name (default sweep)")
    sweep.add_argument("--port", type=int, default=8001, help="server port on the testbed (default 8001)")
    sweep.set_defaults(func=run_sweep_command)

    report = sub.add_parser(
        "report",
        help="show a recorded sweep again: table, summary and plots",
        description="Print the table and the summary of a sweep JSON, and draw its plots.",
    )
    report.add_argument("sweep_json", type=Path, metavar="SWEEP.json")
    report.add_argument("--plots", type=Path, metavar="DIR", help="write the two plots to DIR")
    report.set_defaults(func=run_report_command)


def options_from_args(args: argparse.Namespace) -> Any:
    """SweepOptions from the parsed arguments (every value checked; a bad one is a SplitpipeError)."""
    from splitpipe.partition.load import parse_shape
    from splitpipe.testbed.options import parse_share
    from splitpipe.testbed.sweep import SweepOptions, parse_links
    from splitpipe.units import parse_duration_ms

    links = parse_links(args.links)
    device_cpu = parse_share(args.device_cpu)
    rtt = parse_duration_ms(args.rtt)
    # the testbed's own limits, checked now rather than after the model has loaded
    from splitpipe.testbed.options import TestbedOptions

    for rate in links:
        TestbedOptions(name=args.name, rate_mbit=rate, rtt_ms=rtt, device_cpu=device_cpu, ports=(args.port,))
    objectives = tuple(o.strip() for o in args.objectives.split(",") if o.strip())
    if args.codec != "auto":
        from splitpipe.partition.codecs import check_codec_name

        check_codec_name(args.codec)
    return SweepOptions(
        model=args.model,
        input_shape=parse_shape(args.input_shape) if args.input_shape else None,
        weights=args.weights,
        links_mbit=links,
        rtt_ms=rtt,
        device_cpu=device_cpu,
        codec=args.codec,
        max_error=args.max_error,
        objectives=objectives,
        frames=args.frames,
        min_frames=args.min_frames,
        max_frames=args.max_frames,
        run_seconds=args.run_seconds,
        warmup_frames=args.warmup_frames,
        pipelined_window=args.pipelined,
        images=args.images,
        calibration_samples=args.calibration_samples,
        out=args.out,
        keep_exports=args.keep_exports,
        name=args.name,
        port=args.port,
    )


def run_sweep_command(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console

    from splitpipe.testbed.sweep import Sweep, default_out
    from splitpipe.testbed.sweep_report import plot_sweep, print_sweep
    from splitpipe.testbed.testbed import require_root

    options = options_from_args(args)
    require_root()
    import logging

    # the sweep's own progress lines say what happens; library chatter would bury them
    for name in ("onnxscript", "onnx_ir", "splitpipe.partition", "splitpipe.devices"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if options.out is None:
        from dataclasses import replace

        options = replace(options, out=default_out(options.model))
    assert options.out is not None
    command = "splitpipe " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    data = Sweep(options, log=lambda line: print(line, flush=True), command=command).run()
    out = Path(options.out)
    path = out / "sweep.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    pngs = plot_sweep(data, out)
    console = Console(width=160)
    print_sweep(data, console)
    console.print(f"sweep written to {path}; plots {', '.join(str(p) for p in pngs)}")
    console.print(f"whole sweep: {data['duration_s']:.0f} s")
    return 0


def run_report_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from splitpipe.errors import check_output_dir
    from splitpipe.testbed.sweep_report import load_sweep, plot_sweep, print_sweep

    if args.plots is not None:
        check_output_dir(args.plots, "--plots", "the plots")
    data = load_sweep(args.sweep_json)
    console = Console(width=160)
    print_sweep(data, console)
    if args.plots:
        pngs = plot_sweep(data, args.plots)
        console.print(f"plots written: {', '.join(str(p) for p in pngs)}")
    return 0
