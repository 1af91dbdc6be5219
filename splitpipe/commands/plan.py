"""``splitpipe plan``: every split point of a model, its predicted cost, and the Pareto front."""

from __future__ import annotations

import argparse
from typing import Any


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments naming the model; shared by plan and export."""
    p.add_argument(
        "model", nargs="?", help="torchvision:NAME, package.module:callable, or path/to/model.onnx"
    )
    p.add_argument("--input-shape", help="e.g. 1,3,224,224 (default for torch models: 1,3,224,224)")
    p.add_argument("--weights", help="a local state_dict file for a torch model")
    p.add_argument(
        "--max-cut-tensors",
        type=int,
        default=1,
        metavar="K",
        help="allow cuts where up to K tensors cross (default 1)",
    )


def given_request_flags(args: argparse.Namespace, *, allow: tuple[str, ...] = ()) -> list[str]:
    """The model and cost arguments of ``args`` set to something other than their defaults (a
    stored request, ``--from`` or ``--plan``, ignores them), as the user typed their names."""
    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    add_cost_arguments(parser)
    defaults = vars(parser.parse_args([]))
    names: dict[str, str] = {}
    for action in parser._actions:  # every flag of a destination: --profile/--analytic
        flag = action.option_strings[0] if action.option_strings else action.dest.upper()
        names[action.dest] = f"{names[action.dest]}/{flag}" if action.dest in names else flag
    return [
        names[dest]
        for dest, default in defaults.items()
        if dest not in allow and hasattr(args, dest) and getattr(args, dest) not in (default, None)
    ]


def add_cost_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="local",
        help="device profile: local (this machine, measured), a built-in name, or PATH.json",
    )
    p.add_argument(
        "--server", default="local", help="server profile (default local: measured on this machine)"
    )
    p.add_argument(
        "--link",
        default="20mbit,10ms",
        help="bandwidth,round-trip time: kbit, mbit or gbit and us, ms or s; plain numbers are Mbit/s and ms "
        "(default 20mbit,10ms)",
    )
    p.add_argument(
        "--codec",
        default="raw",
        help="bottleneck codec, e.g. int8, int8/ch+zstd, uint4+lz4, fp16, raw (default), or auto "
        "(per split, the fewest bytes within --max-error; docs/codecs.md)",
    )
    p.add_argument(
        "--max-error",
        type=float,
        default=None,
        help="for --codec auto: largest relative L2 error the codec may add to the cut tensor (default 0.01)",
    )
    p.add_argument(
        "--calibration-samples",
        type=int,
        default=2,
        help="inputs the codec is measured on (default 2): random, or pictures with --calibration-images",
    )
    p.add_argument(
        "--calibration-images",
        metavar="DIR",
        help="measure codecs on the pictures of DIR (the first --calibration-samples, preprocessed as "
        "the agent's images source does) instead of random inputs; for image models",
    )
    p.add_argument(
        "--offload-codec",
        default="raw",
        help="how the offload baseline sends the input: raw (default, as it is) or a codec, e.g. jpeg for images",
    )
    p.add_argument(
        "--device-from",
        metavar="PLAN.json",
        help="take head and encode times from a plan measured on the device (splitpipe plan ... --json there)",
    )
    p.add_argument(
        "--server-from",
        metavar="PLAN.json",
        help="take tail and decode times from a plan measured on the server",
    )
    p.add_argument(
        "--overhead-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="per-frame cost outside the modelled stages (capture, messages, gRPC, hand-offs), added to "
        "the latency of options that send (default 0; splitpipe bench sweep measures it)",
    )
    p.add_argument(
        "--local-overhead-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="the same for local, where nothing is sent (default 0)",
    )
    p.add_argument(
        "--device-overhead-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="the agent's own device time per frame beyond head and encode, when pipelined, added to "
        "the device stage of the predicted frames/s (default 0; splitpipe bench sweep --pipelined measures it)",
    )
    p.add_argument(
        "--window",
        type=int,
        default=4,
        metavar="N",
        help="frames in flight of the pipelined agent (its --window; default 4), for the predicted frames/s",
    )
    p.add_argument(
        "--threads", type=int, default=1, help="ONNX Runtime intra-op threads when measuring (default 1)"
    )
    p.add_argument(
        "--profile",
        dest="profile_mode",
        default="segments",
        choices=["segments", "direct", "analytic"],
        help="how latency is obtained: segments (measured, fast), direct (measured per head and tail), analytic (estimated)",
    )
    p.add_argument(
        "--analytic",
        dest="profile_mode",
        action="store_const",
        const="analytic",
        help="same as --profile analytic",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before measuring")


def _absolute(path: str | None) -> str | None:
    """A file the request names, made absolute where it exists, so that a plan JSON still
    finds it from another working directory (export --plan, plan --from)."""
    from pathlib import Path

    return str(Path(path).resolve()) if path and Path(path).exists() else path


def request_from_args(args: argparse.Namespace, **overrides: Any) -> Any:
    from splitpipe.errors import SplitpipeError
    from splitpipe.partition.load import parse_shape
    from splitpipe.partition.plan import OBJECTIVES, PlanRequest

    if not args.model:
        raise SplitpipeError(
            "no model given; pass torchvision:NAME, package.module:callable, or path/to/model.onnx"
        )
    objectives = tuple(
        o.strip() for o in getattr(args, "objectives", "latency,bytes,energy").split(",") if o.strip()
    )
    for o in objectives:
        if o not in OBJECTIVES:
            from splitpipe.errors import choices

            raise choices("objective", o, OBJECTIVES)
    fields = dict(
        model=_absolute(args.model) if args.model.endswith(".onnx") else args.model,
        input_shape=parse_shape(args.input_shape) if args.input_shape else None,
        weights=_absolute(args.weights),
        device=args.device,
        server=args.server,
        link=args.link,
        codec=args.codec or "raw",
        max_error=args.max_error,
        calibration_samples=args.calibration_samples,
        calibration_images=_absolute(args.calibration_images),
        offload_codec=args.offload_codec,
        device_from=_absolute(args.device_from),
        server_from=_absolute(args.server_from),
        overhead_ms=args.overhead_ms,
        local_overhead_ms=args.local_overhead_ms,
        device_overhead_ms=args.device_overhead_ms,
        objectives=objectives,
        window=args.window,
        max_cut_tensors=args.max_cut_tensors,
        threads=args.threads,
        profile_mode=args.profile_mode,
        repeats=args.repeats,
        warmup=args.warmup,
    )
    fields.update(overrides)
    return PlanRequest(**fields)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "plan",
        help="find and rank every split point of a model",
        description="Find every valid split point of a model, predict latency, bytes, device energy "
        "and memory of each, and report the Pareto-optimal splits against running all on the "
        "device (local) and sending the input (offload).",
    )
    add_model_arguments(p)
    add_cost_arguments(p)
    p.add_argument(
        "--objectives",
        default="latency,bytes,energy",
        help="comma-separated, from latency, energy, bytes, memory, throughput (pipelined frames/s) "
        "(default latency,bytes,energy)",
    )
    p.add_argument("--json", metavar="FILE", help="write the plan as JSON (docs/plan-json.md)")
    p.add_argument(
        "--plot", metavar="PNG", help="write a plot of latency against bytes with the front marked"
    )
    p.add_argument(
        "--from", dest="replay", metavar="PLAN.json", help="re-run the request stored in a plan JSON"
    )
    p.add_argument(
        "--pareto-only", action="store_true", help="show only Pareto-optimal candidates in the table"
    )
    p.set_defaults(func=run)


def progress_bar() -> Any:
    """A rich progress callback (what, done, total) and the context that shows it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("profiling {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    )
    task = bar.add_task("", total=None)

    def update(what: str, done: int, total: int) -> None:
        bar.update(task, description=what, completed=done, total=total)

    return bar, update


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from splitpipe.errors import check_output_file, check_plot_file, check_writable
    from splitpipe.partition.plan import make_plan, read_plan
    from splitpipe.partition.report import plot_plan, print_plan

    # before planning, which can take minutes
    if args.json:
        check_output_file(args.json, "--json", "plan.json")
        check_writable(args.json, "--json")
    if args.plot:
        check_plot_file(args.plot, example="pareto.png")
        check_writable(args.plot, "--plot")
    if args.replay:
        stray = given_request_flags(args)
        if stray:
            from splitpipe.errors import SplitpipeError

            raise SplitpipeError(
                f"--from re-runs the request stored in {args.replay} as it is, so {', '.join(stray)} would be "
                "ignored; drop them, or plan anew without --from"
            )
    req = read_plan(args.replay).request if args.replay else request_from_args(args)
    import shutil

    console = Console(width=shutil.get_terminal_size((180, 24)).columns)
    bar, update = progress_bar()
    with bar:
        plan = make_plan(req, progress=update)
    print_plan(plan, only_pareto=args.pareto_only, console=console)
    if args.json:
        plan.write(args.json)
        console.print(f"plan written to {args.json}")
    if args.plot:
        plot_plan(plan, args.plot)
        console.print(f"plot written to {args.plot}")
    return 0
