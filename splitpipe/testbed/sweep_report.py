"""What a sweep JSON says: its summary against the targets, a table, and two plots.

Everything here reads a recorded sweep (``splitpipe-sweep`` JSON, :mod:`splitpipe.testbed.sweep`)
and needs no root, no testbed and no model: ``splitpipe bench report SWEEP.json`` re-renders a
sweep made elsewhere.

Definitions (docs/testbed.md, "Sweep"):

- **prediction error** of a run: (predicted - measured) / measured end-to-end latency, measured
  as the median over the run's frames; the summary gives the median and the 90th percentile of
  its absolute value over every run at every link;
- **picked**: the option the link's plan predicts fastest; it is compared with the fastest
  *measured* run at that link;
- **goodput** of a transfer-bound run (the raw offload): the bytes of a request and its reply
  over the time they spend on the link, ``(request + reply bytes) x 8 / (network_ms - RTT)``,
  where ``network_ms`` is the agent's round trip minus the server's own time (two durations,
  each on one clock) and RTT the link's measured round trip; as a fraction of the rate set on
  the link (tbf's) and of the TCP goodput measured on it;
- **throughput** (``--pipelined N``): each export streamed again with N frames in flight; its
  steady frames per second against the plan's ``fps`` (error as for latency), and over the
  sequential run's frames per second (what pipelining gains).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from splitpipe.errors import SplitpipeError

#: the targets of issue 5
TARGET_MEDIAN_ERROR = 0.10
TARGET_P90_ERROR = 0.25
TARGET_PICKED_WITHIN = 0.05
TARGET_GOODPUT = 0.9
#: a run counts as transfer-bound where the plan puts at least this share of its latency on the link
TRANSFER_BOUND_SHARE = 0.8

_KIND_ORDER = {"local": 0, "offload-raw": 1, "offload-jpeg": 2, "split": 3}


def load_sweep(path: str | Path) -> dict[str, Any]:
    """A sweep JSON from a file, checked enough that the report can rely on its shape."""
    from splitpipe.testbed.sweep import SWEEP_FORMAT, SWEEP_VERSION

    p = Path(path)
    if not p.is_file():
        raise SplitpipeError(f"sweep file not found: {p}")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SplitpipeError(f"{p}: not a readable sweep JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != SWEEP_FORMAT:
        raise SplitpipeError(f"{p}: not a splitpipe sweep JSON (missing format: {SWEEP_FORMAT})")
    if data.get("version") != SWEEP_VERSION:
        raise SplitpipeError(
            f"{p}: sweep JSON version {data.get('version')!r} is not supported; accepted: {SWEEP_VERSION}"
        )
    if not isinstance(data.get("links"), list) or not all(
        isinstance(x.get("runs"), list) for x in data["links"]
    ):
        raise SplitpipeError(f"{p}: malformed sweep JSON (no links with runs)")
    return data


def _quantile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def _p50(run: dict[str, Any]) -> float | None:
    m = run.get("measured")
    return float(m["e2e_ms"]["p50"]) if m and m.get("e2e_ms") else None


def _by_key(link: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["key"]: r for r in link["runs"]}


def goodput(link: dict[str, Any], run: dict[str, Any]) -> dict[str, Any] | None:
    """The goodput of one run (definition in the module's docstring), or None without figures."""
    m = run.get("measured")
    measured_link = link.get("link_run") or link.get("link_planned") or {}
    if not m or not m.get("network_ms") or measured_link.get("rtt_ms") is None:
        return None
    request = float(m["bytes_per_frame"] or 0)
    reply = float(run["predicted"].get("reply_bytes", 0))
    transfer_ms = float(m["network_ms"]["p50"]) - float(measured_link["rtt_ms"])
    if transfer_ms <= 0 or request <= 0:
        return None
    mbit = (request + reply) * 8 / transfer_ms / 1e3
    tcp = measured_link.get("uplink_mbit")
    return {
        "rate_set_mbit": link["rate_set_mbit"],
        "key": run["key"],
        "request_bytes": request,
        "reply_bytes": reply,
        "transfer_ms": transfer_ms,
        "goodput_mbit": mbit,
        "of_set_rate": mbit / float(link["rate_set_mbit"]),
        "of_measured_tcp": mbit / float(tcp) if tcp else None,
        "measured": True,
    }


def throughput(data: dict[str, Any]) -> dict[str, Any] | None:
    """The pipelined runs' throughput against the plans, and over the sequential runs; None
    for a sweep without them."""
    from splitpipe.testbed.sweep import _option_key

    errors, links = [], []
    for link in data["links"]:
        piped = {
            r["key"]: r["pipelined"] for r in link["runs"] if (r.get("pipelined") or {}).get("measured_fps")
        }
        if not piped:
            continue
        errors += [abs(float(p["error"])) for p in piped.values() if p.get("error") is not None]
        speedups = {  # local has nothing to overlap: its frames run one after another either way
            r["key"]: piped[r["key"]]["measured_fps"] / r["measured"]["fps"]
            for r in link["runs"]
            if r["key"] in piped and r["kind"] != "local" and (r.get("measured") or {}).get("fps")
        }
        best = max(piped, key=lambda k: piped[k]["measured_fps"])
        entry: dict[str, Any] = {
            "rate_set_mbit": link["rate_set_mbit"],
            "window": next(iter(piped.values()))["window"],
            "best": best,
            "best_fps": piped[best]["measured_fps"],
            "speedup_over_sequential": speedups,
        }
        picked_id = ((link.get("plan") or {}).get("best") or {}).get("throughput")
        if picked_id is not None:
            picked = _option_key(picked_id, bool(data.get("pictures")))
            entry["picked"] = picked
            if picked in piped:
                entry["picked_fps"] = piped[picked]["measured_fps"]
                entry["picked_of_best"] = piped[picked]["measured_fps"] / piped[best]["measured_fps"]
        links.append(entry)
    if not links:
        return None
    return {
        "n": len(errors),
        "median_abs": statistics.median(errors) if errors else None,
        "p90_abs": _quantile(errors, 90) if errors else None,
        "max_abs": max(errors) if errors else None,
        "links": links,
        "measured": True,
    }


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """Prediction error, picked against best, speedups and goodput of a sweep (all measured
    figures, except the predictions they are compared with)."""
    errors: list[float] = []
    per_kind: dict[str, list[float]] = {}
    links = []
    goodputs = []
    failures = []
    for link in data["links"]:
        runs = _by_key(link)
        measured = {k: v for k, v in ((k, _p50(r)) for k, r in runs.items()) if v is not None}
        for r in link["runs"]:
            if r.get("failure"):
                failures.append(f"{link['rate_set_mbit']:g} Mbit/s {r['key']}: {r['failure']}")
            if r.get("error") is not None:
                errors.append(abs(float(r["error"])))
                per_kind.setdefault(r["kind"], []).append(abs(float(r["error"])))
        entry: dict[str, Any] = {"rate_set_mbit": link["rate_set_mbit"], "picked": link.get("picked")}
        picked = link.get("picked")
        if measured:
            best = min(measured, key=measured.__getitem__)
            entry.update(best=best, best_p50_ms=measured[best])
        if picked in measured and measured:
            p = measured[picked]
            entry.update(
                picked_p50_ms=p,
                picked_over_best=p / measured[entry["best"]],
                picked_within_target=p <= (1 + TARGET_PICKED_WITHIN) * measured[entry["best"]],
            )
            for other in ("local", "offload-raw", "offload-jpeg"):
                if other in measured:
                    entry[f"speedup_vs_{other}"] = measured[other] / p
                    entry[f"latency_reduction_vs_{other}"] = 1 - p / measured[other]
        links.append(entry)
        for r in link["runs"]:
            pred = r.get("predicted") or {}
            on_link = float(pred.get("tx_ms", 0.0)) + float(pred.get("reply_ms", 0.0))
            bound = bool(pred.get("e2e_ms")) and on_link >= TRANSFER_BOUND_SHARE * float(pred["e2e_ms"])
            if r["kind"] == "offload-raw" or bound:
                g = goodput(link, r)
                if g is not None:
                    goodputs.append(g)
    median = statistics.median(errors) if errors else None
    p90 = _quantile(errors, 90) if errors else None
    error: dict[str, Any] = {
        "n": len(errors),
        "median_abs": median,
        "p90_abs": p90,
        "max_abs": max(errors) if errors else None,
        "per_kind_median_abs": {k: statistics.median(v) for k, v in sorted(per_kind.items())},
        "target_median": TARGET_MEDIAN_ERROR,
        "target_p90": TARGET_P90_ERROR,
    }
    if median is not None and p90 is not None:
        error["met"] = median <= TARGET_MEDIAN_ERROR and p90 <= TARGET_P90_ERROR
    other_cores = [
        float(r["other_work"]["cores"]) for link in data["links"] for r in link["runs"] if r.get("other_work")
    ]
    picked_ok = [x.get("picked_within_target") for x in links]
    slowest = min(data["links"], key=lambda x: x["rate_set_mbit"])["rate_set_mbit"] if data["links"] else None
    headline = [g for g in goodputs if g["key"] == "offload-raw" and g["rate_set_mbit"] == slowest]
    return {
        "prediction_error": error,
        "links": links,
        "picked_within_target_everywhere": bool(picked_ok) and all(x is True for x in picked_ok),
        "goodput": goodputs,
        "goodput_headline": headline[0] if headline else None,
        "target_goodput": TARGET_GOODPUT,
        "failures": failures,
        "throughput": throughput(data),
        "other_work_cores": {
            "mean": statistics.fmean(other_cores) if other_cores else None,
            "max": max(other_cores) if other_cores else None,
            "during_side_plans": ((data.get("side_plans") or {}).get("other_work") or {}).get("cores"),
        },
        "measured": True,
    }


# ----------------------------------------------------------------------------------- table
def print_sweep(data: dict[str, Any], console: Any = None) -> None:
    """The sweep as rich tables: one per link, then the summary against the targets."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    summary = data.get("summary") or summarize(data)
    opts = data.get("options", {})
    console.print(
        f"[bold]{data['model']}[/] {data.get('input_shape')}: device CPU {opts.get('device_cpu')} of a core, "
        f"RTT {opts.get('rtt_ms')} ms, codec {opts.get('codec')}"
        + (f" (max error {opts['max_error']})" if opts.get("max_error") is not None else "")
    )
    side = data.get("side_plans")
    if side:
        console.print(
            f"whole model measured on the testbed: device {side['device']['whole_model_ms']:.1f} ms, "
            f"server {side['server']['whole_model_ms']:.1f} ms"
        )
    overhead = data.get("overhead")
    if overhead:
        console.print(
            f"per-frame overhead, measured with a trivial export and included in every prediction: "
            f"{overhead['remote_ms']:.2f} ms when sending, {overhead['local_ms']:.2f} ms local"
            + (
                f"; pipelined, the agent's own device time per frame {overhead['pipelined']['device_ms']:.2f} ms"
                if overhead.get("pipelined")
                else ""
            )
        )
    window = opts.get("pipelined_window")
    pipelined_columns = (
        [(f"fps, {window} in flight", "right"), ("predicted", "right"), ("error", "right")] if window else []
    )
    for link in data["links"]:
        m = link.get("link_run") or link["link_planned"]
        planned = link["link_planned"]
        table = Table(
            title=(
                f"{link['rate_set_mbit']:g} Mbit/s set: measured {m['uplink_mbit']:.2f} Mbit/s, RTT {m['rtt_ms']:.1f} ms "
                f"(planned for {planned['uplink_mbit']:.2f} Mbit/s, {planned['rtt_ms']:.1f} ms)"
            ),
            title_justify="left",
        )
        for col, justify in (
            ("run", "left"), ("where", "left"), ("codec", "left"), ("bytes/frame", "right"),
            ("frames", "right"), ("predicted", "right"), ("p50", "right"), ("p90", "right"),
            ("error", "right"), ("fps", "right"), *pipelined_columns, ("other CPU", "right"), ("", "left"),
        ):  # fmt: skip
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        for r in sorted(link["runs"], key=lambda r: (_KIND_ORDER.get(r["kind"], 9), str(r["key"]))):
            m_ = r.get("measured")
            flags = []
            if r.get("in_plan", {}).get("picked"):
                flags.append("picked")
            if r.get("in_plan", {}).get("pareto"):
                flags.append("pareto")
            if r.get("failure"):
                flags.append("FAILED")
            table.add_row(
                r["key"],
                str(r["label"]),
                str(r["codec"]),
                f"{m_['bytes_per_frame']:,.0f}" if m_ else "-",
                str(m_["e2e_ms"]["n"]) if m_ else "0",
                f"~{r['predicted']['e2e_ms']:.1f}",
                f"{m_['e2e_ms']['p50']:.1f}" if m_ else "-",
                f"{m_['e2e_ms']['p90']:.1f}" if m_ else "-",
                f"{r['error']:+.1%}" if r.get("error") is not None else "-",
                f"{m_['fps']:.2f}" if m_ and m_.get("fps") else "-",
                *(_pipelined_cells(r.get("pipelined")) if window else []),
                f"{r['other_work']['cores']:.2f}" if r.get("other_work") else "-",
                ", ".join(flags),
            )
        console.print(table)
    console.print(
        "ms end to end, sequential frames (window 1, each captured after the previous result); measured on the "
        "testbed, except ~ = the plan's prediction; error = (predicted - measured) / measured p50; "
        + (
            f"fps, {window} in flight = steady frames/s with the agent's --window {window} (its error against the "
            "plan's fps); "
            if window
            else ""
        )
        + "bytes = the request message; other CPU = cores busy with work outside the testbed's device and server groups (other "
        "jobs, the delay relay) during the run."
    )
    for line in summary_lines(summary):
        console.print(line)


def _pipelined_cells(p: dict[str, Any] | None) -> list[str]:
    if not p:
        return ["-", "-", "-"]
    fps = p.get("measured_fps")
    return [
        f"{fps:.2f}" if fps else ("FAILED" if p.get("failure") else "-"),
        f"~{p['predicted_fps']:.2f}",
        f"{p['error']:+.1%}" if p.get("error") is not None else "-",
    ]


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary against the targets, as plain lines."""
    lines = []
    e = summary["prediction_error"]
    if e["n"]:
        lines.append(
            f"prediction error over {e['n']} runs: median {e['median_abs']:.1%} (target <= {e['target_median']:.0%}), "
            f"p90 {e['p90_abs']:.1%} (target <= {e['target_p90']:.0%}), max {e['max_abs']:.1%}: "
            + ("met" if e.get("met") else "NOT met")
        )
        kinds = ", ".join(f"{k} {v:.1%}" for k, v in e["per_kind_median_abs"].items())
        lines.append(f"  median per kind: {kinds}")
    for x in summary["links"]:
        if "picked_p50_ms" not in x:
            lines.append(f"{x['rate_set_mbit']:g} Mbit/s: picked {x.get('picked')} has no measurement")
            continue
        parts = [
            f"{x['rate_set_mbit']:g} Mbit/s: picked {x['picked']} {x['picked_p50_ms']:.1f} ms, "
            f"best measured {x['best']} {x['best_p50_ms']:.1f} ms ({x['picked_over_best']:.3f}x, "
            + ("within 5 %" if x["picked_within_target"] else "NOT within 5 %")
            + ")"
        ]
        for other in ("local", "offload-raw", "offload-jpeg"):
            if f"speedup_vs_{other}" in x:
                parts.append(
                    f"vs {other} {x[f'speedup_vs_{other}']:.2f}x ({x[f'latency_reduction_vs_{other}']:.0%} lower)"
                )
        lines.append("; ".join(parts))
    for g in summary["goodput"]:
        tcp = f", {g['of_measured_tcp']:.3f} of the measured TCP goodput" if g.get("of_measured_tcp") else ""
        lines.append(
            f"goodput {g['key']} at {g['rate_set_mbit']:g} Mbit/s: {g['goodput_mbit']:.2f} Mbit/s "
            f"({g['request_bytes'] + g['reply_bytes']:,.0f} B in {g['transfer_ms']:.1f} ms) = "
            f"{g['of_set_rate']:.3f} of the set rate (target {summary['target_goodput']}){tcp}"
        )
    t = summary.get("throughput")
    if t and t["n"]:
        lines.append(
            f"throughput prediction error over {t['n']} pipelined runs: median {t['median_abs']:.1%}, "
            f"p90 {t['p90_abs']:.1%}, max {t['max_abs']:.1%}"
        )
    for x in (t or {}).get("links", []):
        gains = ", ".join(f"{k} {v:.2f}x" for k, v in sorted(x["speedup_over_sequential"].items()))
        picked = (
            f"; the plan's throughput pick {x['picked']} {x['picked_fps']:.2f} fps ({x['picked_of_best']:.3f} of the best)"
            if "picked_fps" in x
            else ""
        )
        lines.append(
            f"{x['rate_set_mbit']:g} Mbit/s, {x['window']} frames in flight: best {x['best']} {x['best_fps']:.2f} fps"
            f"{picked}; over sequential: {gains}"
        )
    w = summary.get("other_work_cores") or {}
    if w.get("mean") is not None:
        plans = w.get("during_side_plans")
        lines.append(
            f"other work on the machine (cores outside the testbed's groups): {w['mean']:.2f} on average during the "
            f"runs, at most {w['max']:.2f}"
            + (f"; {plans:.2f} while the sides were profiled" if plans is not None else "")
        )
    for f in summary["failures"]:
        lines.append(f"FAILED: {f}")
    return lines


# ----------------------------------------------------------------------------------- plots
def plot_sweep(data: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Two PNGs: latency against bandwidth (baselines and the picked split, measured with p50-p90
    bars, predicted dashed), and predicted against measured with the y = x line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = str(data["model"]).rpartition(":")[2].rpartition("/")[2]
    links = sorted(data["links"], key=lambda x: x["rate_set_mbit"])

    def rate(link: dict[str, Any]) -> float:
        return float((link.get("link_run") or link["link_planned"])["uplink_mbit"])

    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list[tuple[float, dict[str, Any]]]] = {}
    picks: list[tuple[float, dict[str, Any]]] = []
    for link in links:
        runs = _by_key(link)
        for key in ("local", "offload-raw", "offload-jpeg"):
            if key in runs:
                series.setdefault(key, []).append((rate(link), runs[key]))
        splits = [r for r in runs.values() if r["kind"] == "split" and r.get("measured")]
        if splits:
            best = min(splits, key=lambda r: r["measured"]["e2e_ms"]["p50"])
            series.setdefault("fastest split", []).append((rate(link), best))
        picked = runs.get(link.get("picked"))
        if picked and picked.get("measured"):
            picks.append((rate(link), picked))
    colours = {
        "local": "tab:blue",
        "offload-raw": "tab:red",
        "offload-jpeg": "tab:orange",
        "fastest split": "tab:green",
    }
    for name, points in series.items():
        xs = [x for x, r in points if r.get("measured")]
        p50 = [r["measured"]["e2e_ms"]["p50"] for _, r in points if r.get("measured")]
        p90 = [r["measured"]["e2e_ms"]["p90"] for _, r in points if r.get("measured")]
        label = name
        if name == "fastest split":
            label += " of each link (" + ", ".join(str(r["key"]) for _, r in points) + ")"
        ax.errorbar(
            xs, p50, yerr=[[0] * len(p50), [b - a for a, b in zip(p50, p90, strict=True)]], marker="o",
            color=colours[name], label=f"{label}, measured p50 (bar: p90)", capsize=3,
        )  # fmt: skip
        ax.plot(
            [x for x, _ in points], [r["predicted"]["e2e_ms"] for _, r in points], linestyle="--",
            color=colours[name], alpha=0.7,
        )  # fmt: skip
    if picks:
        ax.scatter(
            [x for x, _ in picks], [r["measured"]["e2e_ms"]["p50"] for _, r in picks], s=160,
            facecolors="none", edgecolors="black", linewidths=1.5, zorder=5,
            label="planner's pick (" + ", ".join(str(r["key"]) for _, r in picks) + ")",
        )  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = [rate(link) for link in links]
    ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("link rate, measured TCP goodput (Mbit/s)")
    ax.set_ylabel("end-to-end latency per frame (ms)")
    ax.set_title(f"{stem}: latency against bandwidth (dashed: predicted)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    latency_png = out / "sweep-latency.png"
    fig.savefig(latency_png, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    kind_colours = {
        "local": "tab:blue",
        "offload-raw": "tab:red",
        "offload-jpeg": "tab:orange",
        "split": "tab:green",
    }
    lo, hi = float("inf"), 0.0
    for kind, colour in kind_colours.items():
        pts = [
            (r["measured"]["e2e_ms"]["p50"], r["predicted"]["e2e_ms"])
            for link in links
            for r in link["runs"]
            if r["kind"] == kind and r.get("measured")
        ]
        if pts:
            ax.scatter([m for m, _ in pts], [p for _, p in pts], color=colour, label=kind, s=22)
            lo = min(lo, *(min(a, b) for a, b in pts))
            hi = max(hi, *(max(a, b) for a, b in pts))
    if hi > 0:
        span = (lo / 1.3, hi * 1.3)
        ax.plot(span, span, color="black", linewidth=1, label="y = x")
        ax.fill_between(
            span, [v * 0.9 for v in span], [v * 1.1 for v in span], color="grey", alpha=0.15, label="+-10 %"
        )
        ax.set_xlim(span)
        ax.set_ylim(span)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured end-to-end latency, p50 (ms)")
    ax.set_ylabel("predicted end-to-end latency (ms)")
    ax.set_title(f"{stem}: predicted against measured")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    scatter_png = out / "sweep-predicted-vs-measured.png"
    fig.savefig(scatter_png, dpi=120)
    plt.close(fig)
    return [latency_png, scatter_png]


__all__ = ["goodput", "load_sweep", "plot_sweep", "print_sweep", "summarize", "summary_lines"]
