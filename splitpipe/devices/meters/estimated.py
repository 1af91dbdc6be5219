"""Energy estimated from a device profile's power model and CPU utilisation (psutil).

power = idle_w + (active_w - idle_w) x utilisation, where utilisation is the busy fraction of
the CPUs since the previous reading: system-wide by default, or this process's CPU time over
the CPUs it may run on (``scope="process"``, for an agent sharing a machine, as in the
emulated testbed). Always labelled estimated: a linear model of public figures cannot see
frequency scaling, memory traffic, the GPU or the radio, and is easily off by 30 % or more.
"""

from __future__ import annotations

import os
import platform
import time

import psutil

from splitpipe.devices.meters.base import Meter, Reading
from splitpipe.devices.profile import DeviceProfile
from splitpipe.errors import choices

SCOPES = ("system", "process")


def generic_power_model(cores: int | None = None) -> tuple[float, float, str]:
    """(idle W, loaded W, what it is) for a machine with no profile: a rough per-core guess."""
    n = cores or os.cpu_count() or 1
    arm = platform.machine().lower() in ("aarch64", "arm64", "armv7l")
    if arm:
        idle, per_core = 2.5, 1.5
    else:
        idle, per_core = 10.0, 8.0
    kind = "Arm SBC" if arm else "x86-64"
    return (
        idle,
        idle + per_core * n,
        (
            f"generic {kind} guess ({idle:g} W idle + {per_core:g} W per loaded core x {n}), no public figure "
            "for this machine"
        ),
    )


class EstimatedMeter(Meter):
    """Profile power model x CPU utilisation; ``measured`` is always False."""

    name = "estimated"
    kind = "average"
    measured = False
    default_rate_hz = 10.0

    def __init__(
        self, profile: DeviceProfile | None = None, *, scope: str = "system", rate_hz: float | None = None
    ) -> None:
        if scope not in SCOPES:
            raise choices("estimation scope", scope, SCOPES)
        self.profile = profile
        self.scope = scope
        if profile is not None:
            self.idle_w, self.active_w = profile.idle_w, profile.active_w
            self._model = f"profile {profile.name}"
        else:
            self.idle_w, self.active_w, self._model = generic_power_model()
        self._prev: tuple[float, float] | None = None
        self._process = psutil.Process()
        try:
            self._ncpu = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            self._ncpu = os.cpu_count() or 1
        super().__init__(rate_hz=rate_hz)

    def unavailable_reason(self) -> str | None:
        return None

    @property
    def source(self) -> str:
        return f"estimated:{self.profile.name if self.profile else 'generic'}"

    def note(self) -> str:
        return (
            f"estimated, not measured: {self.idle_w:g} W idle + ({self.active_w:g} - {self.idle_w:g}) W x "
            f"{self.scope} CPU utilisation ({self._model})"
        )

    def _busy(self) -> tuple[float, float]:
        """(busy CPU seconds, capacity CPU seconds) counters."""
        if self.scope == "process":
            t = self._process.cpu_times()
            return t.user + t.system, time.monotonic() * self._ncpu
        t = psutil.cpu_times()
        total = sum(t)
        idle = t.idle + getattr(t, "iowait", 0.0)
        return total - idle, total

    def _on_start(self) -> None:
        self._prev = self._busy()

    def utilisation(self) -> float:
        busy, capacity = self._busy()
        prev_busy, prev_cap = self._prev or (busy, capacity)
        self._prev = (busy, capacity)
        span = capacity - prev_cap
        return min(max((busy - prev_busy) / span, 0.0), 1.0) if span > 0 else 0.0

    def _read(self) -> Reading:
        return {"cpu": self.idle_w + (self.active_w - self.idle_w) * self.utilisation()}
