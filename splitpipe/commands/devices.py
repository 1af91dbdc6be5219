"""``splitpipe devices``: the known device profiles, and which meters and runtimes work here (and why not)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "devices",
        help="list device profiles, and the power meters and runtimes available on this machine",
        description="List the built-in device profiles (and this machine's cached measured profile), "
        "and say which power meters and runtimes this machine has, and why the others are unavailable.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--sysfs-root",
        default="/",
        metavar="PATH",
        help="where the host's /sys is mounted (containers); default /",
    )
    parser.set_defaults(func=run)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def collect(sysfs_root: str = "/") -> dict[str, Any]:
    """Everything the command shows, as plain data."""
    import onnxruntime as ort

    from splitpipe.devices.meters import available_meters, detect_meter
    from splitpipe.devices.microbench import local_profile_path
    from splitpipe.devices.profile import builtin_profile_names, load_profile, read_profile_file
    from splitpipe.devices.runtimes import available_runners
    from splitpipe.errors import SplitpipeError
    from splitpipe.kernels import quant

    profiles = [load_profile(name) for name in builtin_profile_names()]
    local_path = local_profile_path()
    local_note = None
    if local_path.is_file():
        try:
            profiles.append(read_profile_file(local_path))
        except SplitpipeError as exc:
            local_note = f"cached local profile unreadable ({exc}); it is measured again on next use"
    else:
        local_note = (
            "local: not measured yet (measured on first use of --device local, or run splitpipe profile)"
        )
    meter = detect_meter(root=sysfs_root)
    return {
        "profiles": [
            {
                "name": p.name,
                "role": p.role,
                "description": p.description,
                "peak_gflops": p.peak_gflops,
                "mem_bandwidth_gbs": p.mem_bandwidth_gbs,
                "memory_bytes": p.memory_bytes,
                "idle_w": p.idle_w,
                "active_w": p.active_w,
                "radio_w": p.radio_w,
                "runtimes": list(p.runtimes),
                "measured": p.measured,
                "measured_power": p.measured_power,
            }
            for p in profiles
        ],
        "local_profile": {"path": str(local_path), "note": local_note},
        "meters": {
            n: {"available": r is None, "reason": r} for n, r in available_meters(root=sysfs_root).items()
        },
        "detected_meter": {"name": meter.name, "source": meter.source, "measured": meter.measured},
        "runtimes": {n: {"available": r is None, "reason": r} for n, r in available_runners().items()},
        "onnxruntime": {"version": ort.__version__, "providers": ort.get_available_providers()},
        "codec_kernels": {"compiled": quant.C is not None, "reason": quant.C_MISSING},
    }


def _rows(data: dict[str, Any]) -> dict[str, tuple[list[str], list[list[str]]]]:
    peak = ["fp32", "fp16", "int8"]
    profiles = [
        [
            p["name"],
            p["role"],
            *[_fmt(p["peak_gflops"].get(k)) for k in peak],
            _fmt(p["mem_bandwidth_gbs"]),
            f"{p['memory_bytes'] / 2**30:.0f}",
            _fmt(p["idle_w"]),
            _fmt(p["active_w"]),
            "measured" if p["measured_power"] else "public/est.",
            "measured" if p["measured"] else "peak x eff.",
        ]
        for p in data["profiles"]
    ]
    det = data["detected_meter"]
    meters = [
        [n, "yes" if m["available"] else "no", (m["reason"] or ("<- used" if n == det["name"] else ""))]
        for n, m in data["meters"].items()
    ]
    runtimes = [
        [n, "yes" if r["available"] else "no", r["reason"] or ""] for n, r in data["runtimes"].items()
    ]
    return {
        "Device profiles": (
            [
                "name",
                "role",
                "GFLOP/s fp32",
                "fp16",
                "int8",
                "GB/s",
                "GiB",
                "idle W",
                "load W",
                "power figures",
                "latency model",
            ],
            profiles,
        ),
        "Power meters on this machine": (["meter", "available", "why not / note"], meters),
        "Runtimes on this machine": (["runtime", "available", "why not"], runtimes),
    }


def _print_rich(data: dict[str, Any]) -> bool:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        return False
    # a pipe or a log file gets 80 columns by default: too narrow for the reasons
    console = Console(width=None if sys.stdout.isatty() else 140)
    for title, (header, rows) in _rows(data).items():
        table = Table(title=title, title_justify="left")
        for col in header:
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    _print_footer(data, console.print)
    return True


def _print_plain(data: dict[str, Any]) -> None:
    out = sys.stdout.write
    for title, (header, rows) in _rows(data).items():
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        out(f"{title}\n")
        for row in [header, *rows]:
            out("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
        out("\n")
    _print_footer(data, lambda s: out(s + "\n"))


def _print_footer(data: dict[str, Any], say: Any) -> None:
    for p in data["profiles"]:
        say(f"{p['name']}: {p['description']}")
    det = data["detected_meter"]
    kind = "measured" if det["measured"] else "ESTIMATED (no sensor)"
    say(f"energy here: {det['source']} -> {kind}")
    say(f"onnxruntime {data['onnxruntime']['version']}: {', '.join(data['onnxruntime']['providers'])}")
    kernels = data["codec_kernels"]
    if kernels["compiled"]:
        say("codec kernels: compiled (splitpipe.kernels._cquant)")
    else:
        say(
            f"codec kernels: {kernels['reason']}; the codecs use ONNX Runtime kernels (slower on small tensors)"
        )
    if data["local_profile"]["note"]:
        say(data["local_profile"]["note"])


def run(args: argparse.Namespace) -> int:
    data = collect(args.sysfs_root)
    if args.json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    elif not _print_rich(data):
        _print_plain(data)
    return 0
