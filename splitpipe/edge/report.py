"""Per-frame records, the agent report (docs/agent.md), interval log lines, and energy shares.

Every duration is measured on the device's clock (``time.perf_counter``), except the server's
stage durations, which are copied from its reply as it measured them; nothing subtracts times
taken on two hosts. The network share of a frame is its round trip minus the server's
``total_us``: two durations, each measured on one clock.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from splitpipe._files import write_whole
from splitpipe.errors import SplitpipeError

_LOGGER = logging.getLogger(__name__)

REPORT_FORMAT = "splitpipe-agent-report"
REPORT_VERSION = 1


def load_report(path: str | Path) -> dict[str, Any]:
    """A report the agent wrote (``--report``), checked enough to summarise and plot it."""
    path = Path(path)
    if not path.is_file():
        raise SplitpipeError(f"report file not found: {path}" + (" (a directory)" if path.is_dir() else ""))
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SplitpipeError(
            f"{path} is not JSON ({exc}); give a report written by splitpipe agent --report"
        ) from None
    if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
        raise SplitpipeError(
            f"{path} is not a splitpipe agent report (format {REPORT_FORMAT!r}); see docs/agent.md"
        )
    if data.get("version") != REPORT_VERSION:
        raise SplitpipeError(
            f"{path}: report version {data.get('version')!r} is not supported (this splitpipe reads {REPORT_VERSION})"
        )
    frames, summary = data.get("frames"), data.get("summary")
    if (
        not isinstance(frames, list)
        or not isinstance(summary, dict)
        or not all(isinstance(f, dict) and isinstance(f.get("captured_s"), (int, float)) for f in frames)
    ):
        raise SplitpipeError(f"{path}: a report needs 'frames' (each with captured_s) and 'summary'")
    for f in frames:
        for key in _FRAME_NUMBERS:
            value = f.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise SplitpipeError(f"{path}: frame {f.get('id')!r} has {key} {value!r}; a number or null")
        if not isinstance(f.get("server", {}), dict):
            raise SplitpipeError(f"{path}: frame {f.get('id')!r} has server {f['server']!r}; an object")
    return data


#: per-frame figures a report file must hold as numbers (or null), for the summary and the plot
_FRAME_NUMBERS = (
    "e2e_ms", "capture_ms", "head_ms", "encode_ms", "rtt_ms", "network_ms", "tx_bytes", "payload_bytes",
)  # fmt: skip


@dataclass(slots=True)
class FrameRecord:
    """What one frame cost. Times in ms on the device's clock; ``server`` as the reply gave it."""

    id: int
    path: str  # "remote" or "local"
    captured: float  # perf_counter when the capture began
    capture_ms: float = 0.0
    head_ms: float = 0.0
    encode_ms: float = 0.0
    tx_bytes: int = 0
    payload_bytes: int = 0
    rtt_ms: float | None = None
    server: dict[str, int] = field(default_factory=dict)
    e2e_ms: float | None = None
    done: float | None = None  # perf_counter when the result was in hand
    sends: int = 0
    error: str | None = None
    energy_mj: float | None = None
    energy_source: str | None = None
    split: str | None = None  # the export it ran through, when the agent adapts among several

    @property
    def device_ms(self) -> float:
        """The device's serial work on this frame: capture, head, encode."""
        return self.capture_ms + self.head_ms + self.encode_ms

    @property
    def network_ms(self) -> float | None:
        total = self.server.get("total_us")
        if self.rtt_ms is None or total is None:
            return None
        return self.rtt_ms - total / 1e3

    def server_ms(self) -> float | None:
        """The server's work per frame: decode plus this frame's share of the (batched) tail run,
        which ``tail_instances`` runs (threads, or Ray Serve replicas) share."""
        if "tail_us" not in self.server:
            return None
        batch = max(self.server.get("batch_size", 1), 1)
        instances = max(self.server.get("tail_instances", 1), 1)
        return (self.server.get("decode_us", 0) + self.server["tail_us"] / batch / instances) / 1e3

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "path": self.path,
            "captured_s": round(self.captured, 6),  # the device's monotonic clock (perf_counter)
            "e2e_ms": _round(self.e2e_ms),
            "capture_ms": _round(self.capture_ms),
            "head_ms": _round(self.head_ms),
            "encode_ms": _round(self.encode_ms),
            "rtt_ms": _round(self.rtt_ms),
            "network_ms": _round(self.network_ms),
            "server": dict(self.server),
            "tx_bytes": self.tx_bytes,
            "payload_bytes": self.payload_bytes,
            "sends": self.sends,
            "energy_mj": _round(self.energy_mj),
            "energy_source": self.energy_source,
        }
        if self.error is not None:
            out["error"] = self.error
        if self.split is not None:
            out["split"] = self.split
        return out


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {
        "p50": round(float(p50), 4),
        "p90": round(float(p90), 4),
        "p99": round(float(p99), 4),
        "mean": round(float(a.mean()), 4),
        "max": round(float(a.max()), 4),
        "n": int(a.size),
    }


class EnergyShares:
    """Splits the device's energy among frames.

    The meter runs for the whole session. After a frame's device work (capture, head, encode)
    the worker calls :meth:`frame_done`; at most every ``interval_s`` a snapshot is taken, and
    the energy of the interval since the previous one is shared among the frames finished in
    it, in proportion to their device work. Frames still waiting at :meth:`stop` share the
    energy up to the stop. So the shares add up to :attr:`attributed_j`, the energy from the
    start to the last snapshot or to the stop, idle time between frames included; after the
    last snapshot with no frame waiting, the rest is in the summary's total only. Each share
    carries the meter's label: ``measured`` only when a sensor measured it.
    """

    def __init__(self, meter: Any, interval_s: float = 0.1) -> None:
        self.meter = meter
        self.interval_s = interval_s
        self._waiting: list[FrameRecord] = []
        self._last_j = 0.0
        self._last_t = 0.0
        self._lock = threading.Lock()
        self.sample: Any = None
        self.error: str | None = None

    @property
    def attributed_j(self) -> float:
        """The energy shared among frames so far (joules)."""
        return self._last_j

    def start(self) -> None:
        try:
            self.meter.start()
        except Exception as exc:  # an energy meter must never stop the pipeline
            self.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            _LOGGER.warning("energy meter %s did not start: %s", getattr(self.meter, "name", "?"), self.error)
            self.meter = None
        self._last_t = time.perf_counter()

    def frame_done(self, record: FrameRecord, now: float) -> None:
        if self.meter is None:
            return
        with self._lock:
            self._waiting.append(record)
            if now - self._last_t >= self.interval_s:
                self._share(self.meter.snapshot())
                self._last_t = now

    def _share(self, sample: Any) -> None:
        joules = sample.joules - self._last_j
        self._last_j = sample.joules
        frames, self._waiting = self._waiting, []
        busy = sum(r.device_ms for r in frames)
        for r in frames:
            weight = r.device_ms / busy if busy > 0 else 1 / len(frames)
            r.energy_mj = joules * weight * 1e3
            r.energy_source = sample.energy_source

    def stop(self) -> None:
        if self.meter is None:
            return
        with self._lock:
            self.sample = self.meter.stop()
            if self._waiting:
                self._share(self.sample)

    def to_json(self) -> dict[str, Any]:
        if self.sample is None:
            return {"joules": None, "energy_source": None, "note": self.error or "no meter"}
        s = self.sample
        return {
            "joules": round(s.joules, 6),
            "duration_s": round(s.duration_s, 4),
            "mean_w": round(s.mean_w, 4),
            "source": s.source,
            "energy_source": s.energy_source,
            "complete": s.complete,
            "note": s.note,
            "attribution": "per frame: the energy of each interval shared by device work (docs/agent.md)",
        }


class IntervalLog:
    """One log line per interval: fps and latency percentiles of the frames finished in it (and,
    when the agent adapts among several exports, how many ran through each)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._e2e: list[float] = []
        self._rtt: list[float] = []
        self._frames = 0
        self._failed = 0
        self._splits: dict[str, int] = {}
        self._since = time.perf_counter()

    def add(self, record: FrameRecord) -> None:
        if self.interval_s <= 0:  # no log lines: keep nothing (a daemon's lists would only grow)
            return
        self._frames += 1
        if record.split is not None:
            self._splits[record.split] = self._splits.get(record.split, 0) + 1
        if record.error is not None:
            self._failed += 1
            return
        if record.e2e_ms is not None:
            self._e2e.append(record.e2e_ms)
        if record.rtt_ms is not None:
            self._rtt.append(record.rtt_ms)

    def line(self, in_flight: int) -> str:
        now = time.perf_counter()
        span = max(now - self._since, 1e-9)
        e2e = percentiles(self._e2e)
        rtt = percentiles(self._rtt)
        text = f"{self._frames / span:.1f} fps"
        if e2e:
            text += f", e2e p50 {e2e['p50']:.2f} ms p90 {e2e['p90']:.2f} ms p99 {e2e['p99']:.2f} ms"
        if rtt:
            text += f", rtt p50 {rtt['p50']:.2f} ms"
        text += f", {in_flight} in flight"
        if self._failed:
            text += f", {self._failed} failed"
        if self._splits:
            text += ", frames by split: " + ", ".join(f"{k} {n}" for k, n in self._splits.items())
        self._e2e, self._rtt, self._frames, self._failed, self._since = [], [], 0, 0, now
        self._splits = {}
        return text + " (measured)"


@dataclass
class Report:
    """The agent report: every frame and a summary (docs/agent.md)."""

    frames: list[FrameRecord]
    info: dict[str, Any]
    counts: dict[str, int]
    energy: dict[str, Any]
    started: float
    ended: float
    summary: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.summary = self._summarise()

    @property
    def lost(self) -> int:
        return int(self.counts["lost"])

    def _summarise(self) -> dict[str, Any]:
        ok = [r for r in self.frames if r.error is None and r.e2e_ms is not None]
        done_at = [r.done for r in ok if r.done is not None]
        span = (max(done_at) - min(r.captured for r in ok)) if ok and done_at else 0.0
        fps = len(ok) / span if span > 0 else 0.0

        def col(getter: Any) -> list[float]:
            return [v for v in (getter(r) for r in ok) if v is not None]

        stages: dict[str, Any] = {
            "e2e_ms": percentiles(col(lambda r: r.e2e_ms)),
            "capture_ms": percentiles(col(lambda r: r.capture_ms)),
            "head_ms": percentiles(col(lambda r: r.head_ms)),
            "encode_ms": percentiles(col(lambda r: r.encode_ms)),
            "rtt_ms": percentiles(col(lambda r: r.rtt_ms)),
            "network_ms": percentiles(col(lambda r: r.network_ms)),
        }
        for key in ("queue_us", "decode_us", "tail_us", "total_us"):
            stages[f"server_{key[:-3]}_ms"] = percentiles(
                col(lambda r, k=key: r.server[k] / 1e3 if k in r.server else None)
            )
        stages = {k: v for k, v in stages.items() if v is not None}

        # Throughput bound: each stage's capacity is 1 / its mean busy time per frame, measured in
        # this run; the pipeline cannot beat the slowest.
        busy = {"device": col(lambda r: r.device_ms), "server": col(lambda r: r.server_ms())}
        capacity = {name: 1e3 / float(np.mean(v)) for name, v in busy.items() if v and np.mean(v) > 0}
        bound: dict[str, Any] | None = None
        if capacity:
            slowest = min(capacity, key=lambda k: capacity[k])
            bound = {
                "stage": slowest,
                "fps": round(capacity[slowest], 3),
                "stages_fps": {k: round(v, 3) for k, v in capacity.items()},
                "stage_ms": {k: round(float(np.mean(v)), 4) for k, v in busy.items() if v},
            }
        # over every completed frame, local ones sending 0 bytes (as the latencies cover them all);
        # bytes_per_remote_frame: over the frames that crossed the link
        tx = [r.tx_bytes for r in ok]
        payload = [r.payload_bytes for r in ok]
        remote_tx = [r.tx_bytes for r in ok if r.path == "remote"]
        energy = [r.energy_mj for r in ok if r.energy_mj is not None]
        return {
            **self.counts,
            "duration_s": round(self.ended - self.started, 4),
            "fps": round(fps, 3),
            "bytes_per_frame": round(float(np.mean(tx)), 1) if tx else 0.0,
            "payload_bytes_per_frame": round(float(np.mean(payload)), 1) if payload else 0.0,
            "bytes_per_remote_frame": round(float(np.mean(remote_tx)), 1) if remote_tx else None,
            "latency": stages,
            "bound": bound,
            "achieved_fraction": round(fps / bound["fps"], 4) if bound and bound["fps"] > 0 else None,
            "energy_mj_per_frame": round(float(np.mean(energy)), 4) if energy else None,
            "energy": self.energy,
            "measured": True,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "version": REPORT_VERSION,
            **self.info,
            "frames": [r.to_json() for r in self.frames],
            "summary": self.summary,
        }

    def write(self, path: str | Path) -> None:
        write_whole(path, json.dumps(self.to_json(), indent=1) + "\n")

    def lines(self) -> list[str]:
        """A short human summary (the CLI prints it)."""
        return summary_lines(self.summary, self.info)


def summary_lines(s: dict[str, Any], info: dict[str, Any]) -> list[str]:
    """A short human summary of a report's ``summary`` and its run ``info`` (what the agent
    prints at the end, and ``splitpipe report`` for a report file)."""
    lat = s["latency"]
    out = [
        f"{s['completed']} frames in {s['duration_s']:.1f} s: {s['fps']:.1f} fps (measured); "
        f"{s['failed']} failed, {s['lost']} lost, {s['resent']} resent after {s['reconnects']} reconnect(s)"
        + (f"; {s['unreadable_inputs']} unreadable input(s) skipped" if s.get("unreadable_inputs") else "")
    ]

    def p(key: str) -> str:
        v = lat.get(key)
        return "-" if v is None else f"p50 {v['p50']:.2f} p90 {v['p90']:.2f}"

    remote = info.get("path") in ("remote", "adaptive")
    parts = [f"e2e {p('e2e_ms')}", f"head {p('head_ms')}"]
    if "encode_ms" in lat and remote:
        parts += [
            f"encode {p('encode_ms')}",
            f"rtt {p('rtt_ms')}",
            f"server total {p('server_total_ms')}",
        ]
    out.append("latency ms (measured): " + ", ".join(parts))
    if remote:
        line = f"bytes per frame: {s['bytes_per_frame']:,.0f} (payload {s['payload_bytes_per_frame']:,.0f})"
        per_remote = s.get("bytes_per_remote_frame")
        if info.get("path") == "adaptive" and per_remote is not None:
            line += f"; {per_remote:,.0f} per remote frame"
        out.append(line)
    if s["bound"]:
        b = s["bound"]
        limit = info.get("fps_limit")
        out.append(
            f"slowest stage (measured): {b['stage']} ({b['fps']:.1f} fps); "
            f"achieved {s['achieved_fraction']:.2f} of it"
            + (f" (capture limited to {limit:g} fps by --fps)" if limit else "")
        )
    adapt = info.get("adapt")
    if adapt:
        used = ", ".join(
            f"{o['name']} {o['frames']} ({o['probes']} probes)" for o in adapt["options"] if o["frames"]
        )
        link = adapt["link"]
        speed = (
            "too fast to measure" if link["bandwidth_mbit"] is None else f"{link['bandwidth_mbit']:g} Mbit/s"
        )
        out.append(
            f"splits: {used}; {adapt['switch_count']} switch(es), ending on {adapt['current']}; "
            f"link {speed}, rtt {link['rtt_ms']:.2f} ms ({link['source']})"
        )
    e = s["energy"]
    if e.get("joules") is not None:
        per = s["energy_mj_per_frame"]
        out.append(
            f"device energy: {e['joules']:.3f} J ({e['energy_source']}, {e['source']})"
            + (f", {per:.2f} mJ per frame" if per is not None else "")
        )
    return out
