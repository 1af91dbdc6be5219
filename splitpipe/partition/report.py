"""Showing a plan: a rich table for the terminal and a PNG of the front."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from splitpipe.partition.plan import OBJECTIVES, Option, Plan


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _fmt(opt: Option, key: str, value: str) -> str:
    # "~" marks a prediction; plain numbers were measured
    return ("~" if opt.estimated.get(key, False) else "") + value


def _row(opt: Option) -> list[str]:
    shapes = " + ".join("x".join(str(d) for d in t["shape"]) for t in opt.tensors) or "-"
    return [
        str(opt.id),
        opt.label,
        shapes,
        opt.codec,
        human_bytes(opt.tx_bytes) if opt.tx_bytes else "0",
        _fmt(opt, "head_ms", f"{opt.head_ms:.2f}"),
        _fmt(opt, "tx_ms", f"{opt.tx_ms + opt.rtt_ms + opt.reply_ms:.2f}"),
        _fmt(opt, "tail_ms", f"{opt.tail_ms:.2f}"),
        _fmt(opt, "e2e_ms", f"{opt.e2e_ms:.2f}"),
        _fmt(opt, "fps", f"{opt.fps:.1f}" if opt.fps else "-"),
        _fmt(opt, "device_energy_mj", f"{opt.device_energy_mj:.1f}"),
        _fmt(opt, "head_mem_bytes", human_bytes(opt.head_mem_bytes)),
        "*" if opt.pareto else "",
    ]


def print_plan(plan: Plan, *, only_pareto: bool = False, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    # piped output gets a wide table instead of rich's 80-column fallback
    console = console or Console(width=shutil.get_terminal_size((180, 24)).columns)
    title = (
        f"{plan.model} {plan.input_shape} | device {plan.device['name']} | server {plan.server['name']} | "
        f"link {plan.link['bandwidth_mbps']:g} Mbit/s, {plan.link['rtt_ms']:g} ms RTT | codec {plan.codec}"
    )
    table = Table(title=title, title_justify="left", show_lines=False)
    for col, justify in [
        ("id", "right"),
        ("after", "left"),
        ("tensor", "left"),
        ("codec", "left"),
        ("sent", "right"),
        ("head ms", "right"),
        ("link ms", "right"),
        ("tail ms", "right"),
        ("e2e ms", "right"),
        ("fps", "right"),
        ("energy mJ", "right"),
        ("head mem", "right"),
        ("pareto", "center"),
    ]:
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    shown = [c for c in plan.candidates if c.pareto or not only_pareto]
    for c in shown:
        table.add_row(*_row(c), style="bold" if c.pareto else None)
    table.add_section()
    for b in plan.baselines.values():
        table.add_row(*_row(b), style="cyan")
    console.print(table)
    if only_pareto and len(shown) < len(plan.candidates):
        console.print(
            f"({len(plan.candidates) - len(shown)} dominated candidates hidden; drop --pareto-only to see them)"
        )
    console.print(
        f"~ estimated, otherwise measured ({plan.device['method']}; server: {plan.server['method']}). "
        f"Energy: {plan.device.get('energy_source')}. link ms = uplink + RTT + reply. fps: pipelined, "
        f"{plan.request.window} frames in flight (the slowest stage, or window / e2e)."
        + (f" Codec times on the {path}." if (path := plan.profiling.get("codec_path")) else "")
    )
    names = {o.id: o for o in plan.options()}
    best = ", ".join(
        f"{obj}: {names[plan.best[obj]].id} ({names[plan.best[obj]].label})"
        for obj in OBJECTIVES
        if obj in plan.best
    )
    console.print(f"Best per objective - {best}. Planned in {plan.planning_s:.1f} s.")


def plot_plan(plan: Plan, path: str | Path) -> None:
    """Latency against bytes sent: every candidate, the Pareto front marked, the baselines drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    xs = [c.e2e_ms for c in plan.candidates]
    ys = [max(c.tx_bytes, 1) for c in plan.candidates]
    ax.scatter(xs, ys, s=18, c="0.6", label="split candidates")
    front = sorted((c for c in plan.candidates if c.pareto), key=lambda c: c.e2e_ms)
    if front:
        ax.scatter(
            [c.e2e_ms for c in front],
            [max(c.tx_bytes, 1) for c in front],
            s=40,
            c="tab:red",
            label="Pareto-optimal",
            zorder=3,
        )
        for c in front:
            ax.annotate(
                f"{c.id} {c.label}",
                (c.e2e_ms, max(c.tx_bytes, 1)),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
            )
    local, offload = plan.baselines["local"], plan.baselines["offload"]
    ax.axvline(local.e2e_ms, color="tab:blue", ls="--", label=f"local only ({local.e2e_ms:.0f} ms)")
    ax.scatter(
        [offload.e2e_ms],
        [offload.tx_bytes],
        marker="s",
        s=50,
        c="tab:green",
        label=f"full offload ({offload.e2e_ms:.0f} ms)",
        zorder=3,
    )
    ax.set_yscale("log")
    ax.set_xlabel(
        "end-to-end latency per frame, ms" + (" (estimated)" if local.estimated.get("e2e_ms") else "")
    )
    ax.set_ylabel("bytes sent per frame")
    ax.set_title(
        f"{plan.model} on {plan.device['name']} -> {plan.server['name']}, "
        f"{plan.link['bandwidth_mbps']:g} Mbit/s / {plan.link['rtt_ms']:g} ms, codec {plan.codec}",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
