"""``splitpipe profile``: measure THIS machine (run it on the device) and write a device profile JSON."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

Progress = Callable[[str, int, int], None]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="measure this device with micro-benchmarks and write a profile for --device",
        description="Run ONNX Runtime micro-benchmarks per operator class (conv, dwconv, matmul, "
        "elementwise, pool) at a few sizes, the memory bandwidth and per-call overheads, and idle and "
        "loaded power where a meter exists. Run it ON the device; pass the file to "
        "splitpipe plan --device FILE.",
    )
    parser.add_argument("--out", required=True, metavar="FILE", help="where to write the profile JSON")
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op threads, as the head will run (default 1)"
    )
    parser.add_argument("--name", default=None, help="profile name (default: the file name without .json)")
    parser.add_argument("--quick", action="store_true", help="one size per operator class (about a second)")
    parser.add_argument(
        "--base",
        metavar="PROFILE",
        help="built-in profile (or JSON) that supplies what is not measured: description, radio and, "
        "without a meter, power figures",
    )
    parser.add_argument(
        "--provider",
        default="cpu",
        help="ONNX Runtime execution provider: cpu, cuda or tensorrt (default cpu)",
    )
    parser.add_argument(
        "--meter",
        default="auto",
        help="power meter: auto (the best here), none, or a name from splitpipe devices",
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=None, help="idle power window (default 3, quick 1)"
    )
    parser.add_argument(
        "--load-seconds", type=float, default=None, help="loaded power window (default 3, quick 1)"
    )
    parser.add_argument("--sysfs-root", default="/", metavar="PATH", help="where the host's /sys is mounted")
    parser.set_defaults(func=run)


@contextmanager
def _progress() -> Iterator[Progress]:
    """A rich progress bar on a terminal, plain lines on stderr otherwise."""
    try:
        rich_progress: Any = importlib.import_module("rich.progress")
    except ImportError:
        rich_progress = None
    if rich_progress is None or not sys.stderr.isatty():

        def plain(what: str, done: int, total: int) -> None:
            sys.stderr.write(f"[{done}/{total}] {what}\n")

        yield plain
        return
    with rich_progress.Progress(transient=True) as bar:
        task = bar.add_task("profiling", total=None)

        def fancy(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)

        yield fancy


def _pick_meter(args: argparse.Namespace, base: Any) -> tuple[Any, str]:
    from splitpipe.devices.meters import available_meters, create_meter, detect_meter

    if args.meter == "none":
        return None, "power: not measured (--meter none)"
    if args.meter != "auto":
        meter = create_meter(args.meter, profile=base, root=args.sysfs_root)
        return meter, f"power: measured with {meter.source}"
    meter = detect_meter(base, root=args.sysfs_root)
    if meter.measured:
        return meter, f"power: measured with {meter.source}"
    reasons = "; ".join(f"{n}: {r}" for n, r in available_meters(base, args.sysfs_root).items() if r)
    what = f"public figures of {base.name}" if base else "a generic estimate"
    return None, f"power: no meter on this machine, so idle/active power are {what}, not measured ({reasons})"


def run(args: argparse.Namespace) -> int:
    from splitpipe.devices.microbench import profile_this_machine
    from splitpipe.devices.profile import load_profile
    from splitpipe.devices.runtimes.ort import resolve_providers
    from splitpipe.errors import SplitpipeError, check_output_file, check_writable

    if not 1 <= args.threads <= (os.cpu_count() or 1):
        # ONNX Runtime would start every thread asked for, and a typo (100000) stalls the device
        raise SplitpipeError(
            f"--threads must be at least 1 and at most {os.cpu_count() or 1} (the CPUs of this machine), got {args.threads}"
        )
    for flag in ("idle_seconds", "load_seconds"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            raise SplitpipeError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    out = check_output_file(args.out, "--out", "device.json")
    check_writable(out, "--out")
    name = args.name or out.stem
    resolve_providers([args.provider])  # before any work: the error lists what exists
    base = load_profile(args.base) if args.base else None
    meter, power_note = _pick_meter(args, base)
    sys.stderr.write(power_note + "\n")
    with _progress() as progress:
        profile = profile_this_machine(
            quick=args.quick,
            threads=args.threads,
            progress=progress,
            providers=(args.provider,),
            name=name,
            base=base,
            meter=meter,
            idle_s=args.idle_seconds,
            load_s=args.load_seconds,
        )
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(profile.to_json(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out)  # an interrupted run leaves the old file whole
    _summary(profile, out)
    return 0


def _summary(profile: Any, out: Path) -> None:
    say = sys.stdout.write
    m = profile.measurement
    say(
        f"{profile.name}: {m['cpu_model']}, {m['threads']} thread(s), ONNX Runtime {m['onnxruntime']}"
        f" ({', '.join(m['providers'])}), {m['elapsed_s']:.1f} s\n"
    )
    for cls, rate in profile.measured_gflops.items():
        say(f"  {cls:<12} {rate:10.2f} GFLOP/s  (measured)\n")
    say(f"  memory copy  {profile.mem_bandwidth_gbs:10.2f} GB/s     (measured)\n")
    say(f"  per node     {profile.node_overhead_us:10.2f} us       (measured)\n")
    say(f"  per call     {profile.run_overhead_us:10.2f} us       (measured)\n")
    if profile.boundary_us_per_mb:
        edges = ", ".join(f"{cls} {v:.3g}" for cls, v in profile.boundary_us_per_mb.items())
        say(f"  graph edges  {edges} us/MB (measured)\n")
    tag = "measured" if profile.measured_power else "NOT measured: " + profile.sources.get("idle_w", "")
    say(f"  power        {profile.idle_w:g} W idle, {profile.active_w:g} W loaded ({tag})\n")
    noisy = [p["name"] for p in m["points"] if p["noisy"]]
    if noisy:
        say(
            f"  warning: {', '.join(noisy)} drowned in timing noise (busy machine?); run again for better figures\n"
        )
    say(f"wrote {out}; use it with: splitpipe plan MODEL --device {out}\n")
