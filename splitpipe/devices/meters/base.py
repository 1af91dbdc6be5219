"""The meter contract: a sampling thread, ``start()`` / ``stop() -> EnergySample``.

Two kinds of sensor exist. *Power* sensors (INA3221, the Pi 5 PMIC, NVML power, tegrastats)
give watts at an instant; energy is the trapezoid integral over the samples. *Counter* sensors
(RAPL, NVML's total-energy counter) give cumulative joules; energy is the sum of the differences
between consecutive readings, corrected for wrap-around, and the thread samples often enough to
see every wrap.

A sensor that disappears mid-run (a file that vanishes, a command that starts failing) does not
raise: sampling stops, and the sample reports the energy of the part it covered and says so.
"""

from __future__ import annotations

import abc
import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from splitpipe.errors import SplitpipeError, UnavailableError

_LOGGER = logging.getLogger(__name__)

#: reading of one sensor at one instant: rail or domain name -> watts (power) or joules (counter)
Reading = dict[str, float]


class SensorLost(Exception):
    """Raised by a meter's ``_read`` when its sensor stopped answering."""


@dataclass(frozen=True)
class EnergySample:
    """Energy spent between ``start()`` and ``stop()``."""

    joules: float
    duration_s: float
    mean_w: float
    #: what produced the figure, e.g. ``ina3221:VDD_IN`` or ``estimated:rpi4``
    source: str
    #: True when a sensor measured it; False for estimates and the null meter
    measured: bool
    samples: int = 0
    #: seconds of the window that readings cover; less than duration_s if the sensor was lost
    covered_s: float = 0.0
    complete: bool = True
    #: anything the reader should know (a rail missing, a sensor lost, what is not counted)
    note: str = ""
    #: joules per rail or domain where the sensor reports them
    rails: dict[str, float] = field(default_factory=dict)

    @property
    def energy_source(self) -> str:
        """``measured`` or ``estimated``, as the agent report spells it."""
        return "measured" if self.measured else "estimated"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["energy_source"] = self.energy_source
        return out


class Meter(abc.ABC):
    """A power or energy sensor read by a background thread at ``rate_hz``.

    Subclasses set :attr:`name` and :attr:`kind` and implement :meth:`unavailable_reason`,
    :meth:`_read` and :attr:`source`; stream-like sensors may override :meth:`_run`.
    """

    #: registry name, e.g. ``"rapl"``
    name: ClassVar[str] = ""
    #: ``"power"``: readings are instantaneous watts (trapezoid rule); ``"counter"``: cumulative
    #: joules (differences); ``"average"``: mean watts since the previous reading (rectangles)
    kind: str = "power"
    #: False for meters whose figures are estimates
    measured: ClassVar[bool] = True
    default_rate_hz: ClassVar[float] = 20.0

    def __init__(self, *, rate_hz: float | None = None) -> None:
        rate = self.default_rate_hz if rate_hz is None else rate_hz
        if not (isinstance(rate, (int, float)) and 0 < rate <= 1000):
            raise SplitpipeError(f"meter rate_hz must be in (0, 1000], got {rate_hz!r}")
        self.rate_hz = float(rate)
        self._lock = threading.Lock()
        self._take_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reset()

    # -- what subclasses provide -------------------------------------------------------------
    @abc.abstractmethod
    def unavailable_reason(self) -> str | None:
        """Why this meter cannot run here, or None if it can."""

    @abc.abstractmethod
    def _read(self) -> Reading:
        """One reading; raise SensorLost (or OSError/ValueError) when the sensor is gone."""

    @property
    @abc.abstractmethod
    def source(self) -> str:
        """What the figures come from, e.g. ``ina3221:VDD_IN``."""

    def _total(self, reading: Reading) -> float:
        """The board total from one reading (default: the sum of its rails)."""
        return sum(reading.values())

    def _wrap(self, rail: str) -> float | None:
        """Counter meters: the value at which ``rail``'s counter wraps to zero, if known."""
        return None

    def note(self) -> str:
        """A fixed remark on what this meter does not count."""
        return ""

    def _on_start(self) -> None:  # noqa: B027 - optional hook, most meters need nothing
        """Open whatever the meter needs before the first reading (a subprocess, a handle)."""

    def _on_stop(self) -> None:  # noqa: B027 - optional hook
        """Release what :meth:`_on_start` opened."""

    # -- public ----------------------------------------------------------------------------
    def is_available(self) -> bool:
        return self.unavailable_reason() is None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Take a first reading and start the sampling thread."""
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        reason = self.unavailable_reason()
        if reason:
            raise UnavailableError(f"meter {self.name!r} is unavailable: {reason}")
        self._reset()
        self._on_start()
        self._t0 = time.perf_counter()
        self._take(first=True)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"meter-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> EnergySample:
        """Stop sampling (with a last reading) and return the energy since :meth:`start`."""
        if self._thread is None:
            raise RuntimeError(f"{type(self).__name__}.stop() without start()")
        self._stop.set()
        self._thread.join()
        self._thread = None
        if self._lost is None:
            self._take()
        t_end = time.perf_counter()
        self._on_stop()
        return self._sample(t_end)

    def snapshot(self) -> EnergySample:
        """The energy since :meth:`start` so far, without stopping (for per-frame attribution:
        subtract two snapshots)."""
        if self._thread is None:
            raise RuntimeError(f"{type(self).__name__}.snapshot() without start()")
        self._take()
        return self._sample(time.perf_counter())

    @contextmanager
    def measure(self) -> Iterator[list[EnergySample]]:
        """``with meter.measure() as out: ...`` leaves the EnergySample in ``out[0]``."""
        out: list[EnergySample] = []
        self.start()
        try:
            yield out
        finally:
            out.append(self.stop())

    # -- sampling --------------------------------------------------------------------------
    def _reset(self) -> None:
        self._t0 = 0.0
        self._last: tuple[float, Reading] | None = None
        self._first: tuple[float, Reading] | None = None
        self._energy: dict[str, float] = {}
        self._samples = 0
        self._lost: str | None = None
        self._lost_at: float | None = None

    def _run(self) -> None:
        period = 1.0 / self.rate_hz
        while not self._stop.wait(period):
            if not self._take():
                return

    def _take(self, *, first: bool = False) -> bool:
        """Read the sensor once and integrate; False once the sensor is lost.

        Serialized: ``snapshot()`` on the caller's thread and the sampling thread must not
        interleave a read and its timestamp with another's.
        """
        with self._take_lock:
            if self._lost is not None:
                return False
            try:
                reading = self._read()
            except (SensorLost, OSError, ValueError) as exc:
                if first:
                    self._on_stop()
                    raise UnavailableError(f"meter {self.name!r} cannot read its sensor: {exc}") from None
                with self._lock:
                    self._lost = f"{type(exc).__name__}: {exc}".splitlines()[0]
                    self._lost_at = time.perf_counter()
                _LOGGER.warning("meter %s lost its sensor: %s", self.name, self._lost)
                return False
            self._add(time.perf_counter(), reading)
            return True

    def _add(self, t: float, reading: Reading) -> None:
        """Integrate one reading taken at ``t`` into the running totals."""
        with self._lock:
            if self._last is not None:
                t_prev, prev = self._last
                dt = t - t_prev
                for rail, value in reading.items():
                    if rail not in prev:
                        continue
                    if self.kind == "counter":
                        delta = value - prev[rail]
                        if delta < 0:
                            wrap = self._wrap(rail)
                            # a counter that went backwards without a known range: drop the step
                            delta = delta + wrap if wrap else 0.0
                    elif self.kind == "average":
                        delta = value * dt
                    else:
                        delta = 0.5 * (value + prev[rail]) * dt
                    self._energy[rail] = self._energy.get(rail, 0.0) + delta
            else:
                self._first = (t, reading)
            self._last = (t, reading)
            self._samples += 1

    def _sample(self, t_end: float) -> EnergySample:
        with self._lock:
            duration = max(t_end - self._t0, 0.0)
            covered = (self._last[0] - self._first[0]) if self._last and self._first else 0.0
            joules = self._total(self._energy) if self._energy else 0.0
            notes = [n for n in (self.note(),) if n]
            complete = True
            if self._lost is not None:
                complete = False
                lost_after = (self._lost_at or t_end) - self._t0
                notes.append(
                    f"sensor lost after {lost_after:.3f} s of {duration:.3f} s ({self._lost}); "
                    f"energy covers only the first {covered:.3f} s"
                )
            elif self._samples < 2:
                complete = False
                notes.append("fewer than two readings in the window: no energy figure")
            mean_w = joules / covered if covered > 0 else math.nan
            return EnergySample(
                joules=joules,
                duration_s=duration,
                mean_w=mean_w if math.isfinite(mean_w) else 0.0,
                source=self.source,
                measured=self.measured,
                samples=self._samples,
                covered_s=covered,
                complete=complete,
                note="; ".join(notes),
                rails=dict(self._energy),
            )


class NullMeter(Meter):
    """No sensor and no estimate: energy is reported as 0 J, measured=False, source ``none``."""

    name = "null"
    measured = False
    default_rate_hz = 1.0

    def unavailable_reason(self) -> str | None:
        return None

    def _read(self) -> Reading:
        return {}

    @property
    def source(self) -> str:
        return "none"

    def note(self) -> str:
        return "no power meter: energy not measured"
