"""Choosing the split per frame when the agent has several exports of one model (docs/agent.md).

Each option (an export: a split, ``offload`` or ``local``) has a predicted latency per frame::

    device_ms + [remote] rtt_ms + tx_bytes / bytes_per_ms + server_ms

with ``device_ms`` (capture, head, encode) and ``tx_bytes`` measured on the device (at warm-up,
then per frame of that option), ``server_ms`` the server's own total from its replies (both the
low median of the option's latest ``recent`` frames, so that one stalled frame, a garbage
collection on the device or one slow reply, does not move them; a lasting change shows once it
fills more than half of them), and the
link (``rtt_ms``, ``bytes_per_ms``) fitted to the network times of recent frames: a frame's
network time is its round trip minus the server's total, two durations each measured on one
clock. Per remote option the smallest network time of the last ``window_s`` seconds is one point
(the smallest of its latest ``samples`` frames, because frames that queued behind others took
longer than the link needs; the latest few, so that a slower link shows within a few frames); a
straight line through the points of options of different sizes gives the round trip (intercept)
and the bandwidth (slope). Until two sizes have been seen, the link the plan assumed (the
export's manifest) fills in, marked as planned.

The chooser moves to the option predicted fastest when it beats the current one by more than
``hysteresis`` and the current one has run ``min_frames`` frames, or at once when it is
predicted twice as fast. While the stream to the server is broken (and the client reconnects),
frames run on a ``local`` option when there is one, instead of waiting for the server; so do
the first frames, until the server first answers. An option whose frame failed (an error reply:
over the server's message limit, a tail that failed) is left at once and not chosen again for
``window_s`` seconds, twice as long after each further failure in a row (up to 64 times), then
tried again; one reply that gets through clears that. Options that have not run for
``probe_s`` seconds get one frame now and then (a probe, answered like any frame), so their
figures stay current and a link that got faster is noticed; an option predicted to take more
than ``probe_factor`` times the current one's latency is not probed, so a probe costs little.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from splitpipe.errors import SplitpipeError


@dataclass(frozen=True)
class AdaptOptions:
    window_s: float = 5.0
    samples: int = 4
    probe_s: float = 2.0
    probe_factor: float = 3.0
    hysteresis: float = 0.15
    min_frames: int = 10
    recent: int = 5  # device and server figures: the low median of this many latest frames

    def __post_init__(self) -> None:
        if not (self.window_s > 0 and self.probe_s > 0 and self.probe_factor >= 1):
            raise SplitpipeError("adapt: window and probe interval must be > 0 s, probe factor >= 1")
        if not 0 <= self.hysteresis < 1 or self.min_frames < 1:
            raise SplitpipeError("adapt: hysteresis in [0, 1), min frames >= 1")
        if self.samples < 1 or self.recent < 1:
            raise SplitpipeError(
                f"adapt: samples and recent must be at least 1, got {self.samples}, {self.recent}"
            )


@dataclass
class Option:
    """What the chooser knows about one export."""

    name: str
    remote: bool
    device_ms: float
    tx_bytes: int
    server_ms: float  # the server's total per frame
    server_measured: bool = False
    frames: int = 0  # frames that ran through this option
    probes: int = 0
    last_reply: float = -math.inf  # perf_counter of the latest reply (or local result)
    failures: int = 0  # frames failed in a row (error replies)
    retry_at: float = -math.inf  # after a failure: not chosen before this perf_counter
    network: deque[tuple[float, float]] = field(default_factory=deque)  # (when, network ms)
    # the latest measurements behind device_ms and server_ms (the first: the starting figure)
    device_recent: deque[float] = field(default_factory=deque)
    server_recent: deque[float] = field(default_factory=deque)

    def to_json(self, predicted_ms: float) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": "remote" if self.remote else "local",
            "frames": self.frames,
            "probes": self.probes,
            "predicted_ms": round(predicted_ms, 3),
            "device_ms": round(self.device_ms, 3),
            "tx_bytes": self.tx_bytes,
            "server_ms": round(self.server_ms, 3) if self.remote else None,
            "server_ms_source": ("measured" if self.server_measured else "planned") if self.remote else None,
            "failures": self.failures,
        }


@dataclass(frozen=True)
class Link:
    rtt_ms: float
    bytes_per_ms: float  # inf: too fast to measure with the sizes seen
    source: str  # "measured" (fitted to frames), "planned" (the manifest's assumption) or "unknown"

    def transfer_ms(self, nbytes: int) -> float:
        return 0.0 if math.isinf(self.bytes_per_ms) else nbytes / self.bytes_per_ms

    def to_json(self) -> dict[str, Any]:
        mbit = None if math.isinf(self.bytes_per_ms) else round(self.bytes_per_ms * 8e3 / 1e6, 3)
        return {"rtt_ms": round(self.rtt_ms, 3), "bandwidth_mbit": mbit, "source": self.source}


class Chooser:
    """Picks the option of each frame; thread safe (the head worker picks, the loop observes)."""

    def __init__(self, options: list[Option], planned: Link, settings: AdaptOptions | None = None) -> None:
        if len(options) < 2:
            raise SplitpipeError("adapting needs at least two exports")
        self.options = options
        self.settings = settings or AdaptOptions()
        for o in options:
            o.network = deque(o.network, maxlen=self.settings.samples)
            o.device_recent = deque(o.device_recent or [o.device_ms], maxlen=self.settings.recent)
            o.server_recent = deque(o.server_recent, maxlen=self.settings.recent)
        self.planned = planned
        # the latest round trip fitted (kept while one size is seen); with no plan to start
        # from, one size's network time is taken as round trip (optimistic for larger sizes)
        self._rtt = math.inf if planned.source == "unknown" else planned.rtt_ms
        self._measured: Link | None = None  # the latest link measured (kept while nothing is fresh)
        self.current = min(range(len(options)), key=self.predict)
        self.switches: deque[dict[str, Any]] = deque(maxlen=1000)  # the latest (a daemon runs for days)
        self.switch_count = 0
        self.fallbacks = 0  # frames run locally while the server could not be reached
        self._since_switch = 0
        self._last_probe = -math.inf
        self._lock = threading.Lock()
        self._started = time.perf_counter()

    @property
    def has_local(self) -> bool:
        return any(not o.remote for o in self.options)

    # -- the link ---------------------------------------------------------------------------------
    def link(self, now: float | None = None) -> Link:
        link = self._fit(now)
        if link.source == "measured":
            self._measured = link
        return link

    def _fit(self, now: float | None) -> Link:
        now = time.perf_counter() if now is None else now
        horizon = now - self.settings.window_s
        points = []
        for o in self.options:
            while o.network and o.network[0][0] < horizon:
                o.network.popleft()
            if o.remote and o.network:
                points.append((float(o.tx_bytes), min(ms for _, ms in o.network)))
        sizes = {b for b, _ in points}
        if len(sizes) >= 2:
            n = len(points)
            mean_b = sum(b for b, _ in points) / n
            mean_t = sum(t for _, t in points) / n
            var = sum((b - mean_b) ** 2 for b, _ in points)
            slope = sum((b - mean_b) * (t - mean_t) for b, t in points) / var
            if slope <= 0:  # the sizes seen make no measurable difference: fast link
                return Link(min(t for _, t in points), math.inf, "measured")
            self._rtt = rtt = max(mean_t - slope * mean_b, 0.0)
            return Link(rtt, 1.0 / slope, "measured")
        if points:  # one size: the latest fitted (or planned) round trip, the bandwidth from the rest
            nbytes, ms = points[0]
            rtt = min(self._rtt, ms)
            spent = ms - rtt
            return Link(rtt, nbytes / spent if spent > 0 else math.inf, "measured")
        return self._measured or self.planned

    def predict(self, index: int, link: Link | None = None) -> float:
        o = self.options[index]
        if not o.remote:
            return o.device_ms
        link = link or self.link()
        return o.device_ms + link.rtt_ms + link.transfer_ms(o.tx_bytes) + o.server_ms

    # -- per frame --------------------------------------------------------------------------------
    def pick(
        self, now: float | None = None, remote_up: bool = True, waiting_ms: dict[int, float] | None = None
    ) -> int:
        """The option of the next frame: a probe of a stale option, or the current (after a
        switch when another is predicted enough faster). While ``remote_up`` is False (the
        stream is broken and reconnecting) frames run on the fastest local option, if there is
        one, and the choice resumes once the stream is back. ``waiting_ms``: per option, how
        long its oldest unanswered frame has waited since it was sent; a frame of that option
        takes at least that long, which shows a link that slowed down before any reply does."""
        now = time.perf_counter() if now is None else now
        s = self.settings
        with self._lock:
            local = [i for i, o in enumerate(self.options) if not o.remote]
            if not remote_up and local:
                self.fallbacks += 1
                return min(local, key=lambda i: self.options[i].device_ms)
            link = self.link(now)
            predicted = [
                math.inf if now < o.retry_at else self.predict(i, link) for i, o in enumerate(self.options)
            ]
            # a frame still waiting takes at least as long as it has waited: a lower bound that
            # acts only when decisive (an option twice as fast); measured figures decide otherwise
            bound = list(predicted)
            for i, waited in (waiting_ms or {}).items():
                bound[i] = max(bound[i], self.options[i].device_ms + waited)
            current = self.current
            fled = min(range(len(bound)), key=bound.__getitem__)
            best = min(range(len(predicted)), key=predicted.__getitem__)
            target, shown = None, predicted
            if fled != current and bound[fled] < 0.5 * bound[current]:
                target, shown = fled, bound
                for o, b, p in zip(self.options, bound, predicted, strict=True):
                    if b > 2 * p:
                        o.network.clear()  # its recent frames no longer tell how long it takes
            # a better option wins after min_frames on the current one; one twice as fast at once
            elif best != current and (
                (
                    self._since_switch >= s.min_frames
                    and predicted[best] < (1 - s.hysteresis) * predicted[current]
                )
                or predicted[best] < 0.5 * predicted[current]
            ):
                target = best
            if target is not None:
                self.switches.append(
                    {
                        "t_s": round(now - self._started, 3),
                        "clock_s": round(now, 6),  # the device's monotonic clock (perf_counter)
                        "from": self.options[current].name,
                        "to": self.options[target].name,
                        "predicted_ms": {
                            self.options[i].name: None if math.isinf(p) else round(p, 3)
                            for i, p in enumerate(shown)
                        },
                        "link": link.to_json(),
                    }
                )
                self.current, self._since_switch = target, 0
                self.switch_count += 1
                return target
            if now - self._last_probe >= s.probe_s:
                # every option is tried once; after that only those that might win, and, when no
                # frame crossed the link lately, the remote one that sends least (a cheap look)
                remote = [i for i, o in enumerate(self.options) if o.remote]
                quiet = not any(self.options[i].network for i in remote)
                cheapest = min(remote, key=lambda i: self.options[i].tx_bytes) if remote else -1
                stale = [
                    i
                    for i, o in enumerate(self.options)
                    if i != current
                    and now >= o.retry_at
                    and now - o.last_reply >= (s.window_s if quiet and i == cheapest else s.probe_s)
                    and (
                        o.frames == 0
                        or predicted[i] <= s.probe_factor * predicted[current]
                        or (quiet and i == cheapest)
                    )
                ]
                if stale:
                    self._last_probe = now
                    probe = min(stale, key=lambda i: self.options[i].last_reply)
                    self.options[probe].probes += 1
                    return probe
            self._since_switch += 1
            return current

    def ran(self, index: int, device_ms: float, tx_bytes: int) -> None:
        """A frame of ``index`` was prepared (capture + head + encode took ``device_ms``)."""
        with self._lock:
            o = self.options[index]
            o.device_recent.append(device_ms)
            o.device_ms = _low_median(o.device_recent)
            o.tx_bytes = tx_bytes
            o.frames += 1

    def answered(self, index: int, now: float, rtt_ms: float | None, server_ms: float | None) -> None:
        """A frame of ``index`` got its result at ``now`` (perf_counter): round trip and the
        server's own total, both None for a local frame."""
        with self._lock:
            o = self.options[index]
            o.last_reply = now
            o.failures, o.retry_at = 0, -math.inf
            if rtt_ms is None:
                return
            if server_ms is not None:  # the first reply replaces the plan's figure
                o.server_recent.append(server_ms)
                o.server_ms, o.server_measured = _low_median(o.server_recent), True
            o.network.append((now, max(rtt_ms - (server_ms or 0.0), 0.0)))

    def failed(self, index: int, now: float) -> None:
        """A frame of ``index`` failed at ``now`` (an error reply): leave the option, and keep off
        it for ``window_s`` seconds, doubling with each further failure in a row."""
        with self._lock:
            o = self.options[index]
            o.last_reply = now
            o.failures += 1
            o.retry_at = now + self.settings.window_s * 2 ** min(o.failures - 1, 6)

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            link = self.link()
            return {
                "current": self.options[self.current].name,
                "link": link.to_json(),
                "options": [o.to_json(self.predict(i, link)) for i, o in enumerate(self.options)],
                "switch_count": self.switch_count,
                "fallback_frames": self.fallbacks,
                "switches": list(self.switches),
                "settings": {
                    "window_s": self.settings.window_s,
                    "probe_s": self.settings.probe_s,
                    "probe_factor": self.settings.probe_factor,
                    "hysteresis": self.settings.hysteresis,
                    "min_frames": self.settings.min_frames,
                    "recent": self.settings.recent,
                },
            }


def _low_median(values: deque[float]) -> float:
    """The middle value, the lower of the two middle ones for an even count: a stall (always
    a longer time) needs more than half of the values to move it."""
    return sorted(values)[(len(values) - 1) // 2]
