"""A picture of an agent report: latency per frame, where each frame's time went, throughput.

Three panels over the run's time (the device's clock, from the first capture):

1. end-to-end latency of every completed frame, coloured by the split it ran through (the
   path, local or remote, for a single export), with the running median and the agent's
   switches between splits;
2. the running median of each stage, stacked: the device's work (capture, head, encode), the
   network (round trip less the server's total), the server's total, and what is left of the
   end-to-end time (waiting for a window slot or a head worker);
3. completed frames per second, and the bytes each frame sent.

Everything drawn is measured by the agent; a figure it estimated (energy without a sensor) is
not drawn. matplotlib is imported only here, so the agent runs without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from splitpipe.errors import SplitpipeError

#: stages of panel 2, bottom to top, and their colours
STAGES = (
    ("device: capture + head + encode", "tab:blue"),
    ("network (rtt - server total)", "tab:orange"),
    ("server total", "tab:green"),
    ("waiting on the device (window, worker)", "0.75"),
)


def _running_median(values: np.ndarray, width: int) -> np.ndarray:
    if width <= 1 or len(values) <= width:
        return values if width <= 1 else np.full(len(values), float(np.median(values)))
    pad = width // 2
    padded = np.pad(values, (pad, width - 1 - pad), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width)
    return np.median(windows, axis=1)


def _series(frames: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    def col(key: str) -> np.ndarray:
        return np.array([f.get(key) if f.get(key) is not None else np.nan for f in frames], dtype=float)

    server = np.array([f["server"].get("total_us", np.nan) / 1e3 for f in frames], dtype=float)
    device = col("capture_ms") + col("head_ms") + col("encode_ms")
    e2e = col("e2e_ms")
    network = np.where(np.isnan(col("network_ms")), 0.0, np.clip(col("network_ms"), 0.0, None))
    server = np.where(np.isnan(server), 0.0, server)
    return {
        "t": col("captured_s"),
        "e2e": e2e,
        "device": device,
        "network": network,
        "server": server,
        "rest": np.clip(e2e - device - network - server, 0.0, None),
        "bytes": col("tx_bytes"),
    }


def plot_report(
    data: dict[str, Any], path: str | Path, events: list[tuple[float, str]] | None = None
) -> Path:
    """Draw ``data`` (a report as the agent writes it: docs/agent.md) to ``path`` (PNG, SVG or
    PDF, by its suffix); ``events``: (device clock s, label) marked on every panel, such as a
    link's rate changes. SplitpipeError when it holds no completed frame."""
    import matplotlib.pyplot as plt

    fig = draw_report(data, events)
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def draw_report(data: dict[str, Any], events: list[tuple[float, str]] | None = None) -> Any:
    """The matplotlib Figure of :func:`plot_report` (panels as in the module's docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = sorted(
        (f for f in data.get("frames", []) if f.get("e2e_ms") is not None and "error" not in f),
        key=lambda f: f["captured_s"],
    )
    if not frames:
        raise SplitpipeError("the report holds no completed frame to plot")
    start = min(f["captured_s"] for f in data["frames"])
    s = _series(frames)
    t = s["t"] - start
    width = max(1, min(101, len(frames) // 50) | 1)  # odd, about 2 % of the run

    fig, (ax1, ax2, ax3) = plt.subplots(
        3, 1, sharex=True, figsize=(9, 8), dpi=120, gridspec_kw={"height_ratios": [3, 3, 2]}
    )
    groups = [f.get("split") or f["path"] for f in frames]
    for i, name in enumerate(dict.fromkeys(groups)):
        mask = np.array([g == name for g in groups])
        ax1.scatter(t[mask], s["e2e"][mask], s=5, color=f"C{i}", label=f"{name} ({int(mask.sum())} frames)")
    ax1.plot(
        t, _running_median(s["e2e"], width), color="black", lw=1, label=f"running median ({width} frames)"
    )
    if np.nanmax(s["e2e"]) > 20 * max(np.nanmin(s["e2e"]), 1e-3):
        ax1.set_yscale("log")
    adapt = data.get("adapt") or {}
    for k, switch in enumerate(adapt.get("switches", [])):
        x = switch["clock_s"] - start
        ax1.axvline(x, color="tab:red", lw=0.8, ls=":", label="split switch" if k == 0 else None)
    ax1.set_ylabel("end-to-end ms")
    ax1.legend(fontsize=7, loc="upper left", markerscale=2)
    ax1.grid(True, which="both", alpha=0.3)

    stacked = [_running_median(s[key], width) for key in ("device", "network", "server", "rest")]
    ax2.stackplot(t, *stacked, labels=[label for label, _ in STAGES], colors=[c for _, c in STAGES])
    ax2.set_ylabel(f"ms per frame\n(running median, {width} frames)")
    ax2.legend(fontsize=7, loc="upper left")
    ax2.grid(True, alpha=0.3)

    done = t + s["e2e"] / 1e3
    span = float(max(done.max(), 1e-3))
    step = max(span / 60, 0.25)
    edges = np.arange(0.0, span + step, step)
    counts, _ = np.histogram(done, bins=edges)
    rate = counts / step
    ax3.step(edges, np.append(rate, rate[-1]), where="post", color="black", lw=1, label="completed frames/s")
    ax3.set_ylim(bottom=0, top=max(float(rate.max()) * 1.15, 1.0))
    ax3.set_ylabel("frames/s")
    ax3.set_xlabel("time since the first capture, s (the device's clock)")
    ax3.grid(True, alpha=0.3)
    sent = s["bytes"] > 0
    if sent.any():
        twin = ax3.twinx()
        twin.scatter(t[sent], s["bytes"][sent], s=3, color="tab:purple", label="bytes sent per frame")
        twin.set_ylabel("bytes per frame", color="tab:purple")
        twin.set_ylim(0, float(s["bytes"][sent].max()) * 1.15)  # the largest frame below the top
    ax3.legend(fontsize=7, loc="lower left")

    for clock, label in events or []:
        for ax in (ax1, ax2, ax3):
            ax.axvline(clock - start, color="0.3", lw=0.8, ls="--")
        ax1.annotate(label, (clock - start, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -10),
                     textcoords="offset points", fontsize=7, color="0.3")  # fmt: skip

    summary = data.get("summary", {})
    name = data.get("name")
    name = ", ".join(name) if isinstance(name, list) else name
    fig.suptitle(
        f"{data.get('model', '?')} ({name}), {data.get('path', '?')}: {summary.get('completed', len(frames))} "
        f"frames, {summary.get('fps', 0):.1f} fps, {summary.get('lost', 0)} lost; all measured",
        fontsize=9,
    )
    fig.tight_layout()
    return fig
