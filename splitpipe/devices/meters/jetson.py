"""Jetson power: the on-board INA3221 monitors (hwmon or the older iio layout) and tegrastats.

Layouts, both found by glob because the hwmon number changes between boots:

- hwmon (JetPack 5 and 6, upstream ``ina3221`` driver):
  ``/sys/bus/i2c/drivers/ina3221*/*/hwmon/hwmon*/in<N>_label``, ``in<N>_input`` (bus mV),
  ``curr<N>_input`` (mA). ``in7_label`` ("sum of shunt voltages") has no current and is skipped.
- iio (L4T 32 on Nano, TX2, Xavier; ``ina3221x`` driver):
  ``/sys/bus/i2c/drivers/ina3221x/*/iio:device*/rail_name_<N>``, ``in_power<N>_input`` (mW),
  ``in_voltage<N>_input`` (mV), ``in_current<N>_input`` (mA).

The board's total is one rail on most modules (POM_5V_IN on the Nano, VDD_IN on Orin Nano/NX
and Xavier NX) and a sum on AGX Orin, which has no input rail. The sensors sit on the module:
they miss the carrier board, and NVIDIA's forum reports readings below an external meter's, so a
per-board ``calibration`` factor (found against an external meter) multiplies every reading.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import shutil
import subprocess
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from splitpipe.devices.meters.base import EnergySample, Meter, Reading, SensorLost
from splitpipe.errors import SplitpipeError, UnavailableError

_LOGGER = logging.getLogger(__name__)

#: rails that carry a module's whole input, in order of preference
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")
#: labels that are not rails
_NOT_RAILS = {"NC", "sum of shunt voltages"}

_UNCALIBRATED = (
    "uncalibrated on-board sensor: Jetson INA3221 readings cover the module only and can read "
    "below an external meter; set power_calibration in the device profile"
)


def choose_rails(found: Sequence[str], requested: Sequence[str] | None) -> tuple[list[str], str]:
    """The rails whose sum is the board total, and a note on the choice.

    Raises UnavailableError if a requested rail is missing.
    """
    if requested:
        missing = [r for r in requested if r not in found]
        if missing:
            raise UnavailableError(f"rail(s) {missing} not found; this board reports {list(found)}")
        return list(requested), ""
    for rail in TOTAL_RAILS:
        if rail in found:
            return [rail], ""
    if not found:
        raise UnavailableError("no power rails found")
    return list(found), (
        f"no total-input rail ({' or '.join(TOTAL_RAILS)}): the figure is the sum of {list(found)}, "
        "which misses regulator losses"
    )


@dataclass(frozen=True)
class _Rail:
    label: str
    #: mW file (iio in_power), or None when power comes from volts x amps
    power_file: Path | None
    volt_file: Path | None
    curr_file: Path | None

    def watts(self) -> float:
        if self.power_file is not None:
            return _read_number(self.power_file) / 1e3
        assert self.volt_file is not None and self.curr_file is not None
        return _read_number(self.volt_file) * _read_number(self.curr_file) / 1e6


def _read_number(path: Path) -> float:
    text = path.read_text().strip()
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{path}: not a number: {text!r}")
    return value


def discover_ina3221(root: str | Path = "/") -> tuple[list[_Rail], str, list[str]]:
    """Rails found under ``root``: (rails, layout ``hwmon``/``iio``/``""``, notes on skipped rails)."""
    base = Path(root)
    rails: list[_Rail] = []
    notes: list[str] = []
    for label_file in sorted(base.glob("sys/bus/i2c/drivers/ina3221*/*/hwmon/hwmon*/in*_label")):
        match = re.fullmatch(r"in(\d+)_label", label_file.name)
        if not match:
            continue
        try:
            label = label_file.read_text().strip()
        except OSError:
            continue
        if label in _NOT_RAILS:
            continue
        n = match.group(1)
        volt, curr = label_file.with_name(f"in{n}_input"), label_file.with_name(f"curr{n}_input")
        if not (volt.is_file() and curr.is_file()):
            notes.append(f"rail {label} skipped: {volt.name if not volt.is_file() else curr.name} missing")
            continue
        rails.append(_Rail(label, None, volt, curr))
    if rails or notes:
        return _unique(rails), "hwmon", notes
    for name_file in sorted(base.glob("sys/bus/i2c/drivers/ina3221x/*/iio:device*/rail_name_*")):
        n = name_file.name.rsplit("_", 1)[-1]
        try:
            label = name_file.read_text().strip()
        except OSError:
            continue
        if label in _NOT_RAILS:
            continue
        power = name_file.with_name(f"in_power{n}_input")
        volt, curr = name_file.with_name(f"in_voltage{n}_input"), name_file.with_name(f"in_current{n}_input")
        if power.is_file():
            rails.append(_Rail(label, power, None, None))
        elif volt.is_file() and curr.is_file():
            rails.append(_Rail(label, None, volt, curr))
        else:
            notes.append(f"rail {label} skipped: no in_power{n}_input nor voltage and current")
    return _unique(rails), ("iio" if rails or notes else ""), notes


def _unique(rails: list[_Rail]) -> list[_Rail]:
    """Two monitors may both label a channel alike; keep labels unique so rails stay apart."""
    seen: dict[str, int] = {}
    out = []
    for rail in rails:
        count = seen.get(rail.label, 0)
        seen[rail.label] = count + 1
        out.append(rail if count == 0 else _Rail(f"{rail.label}#{count + 1}", *_files(rail)))
    return out


def _files(rail: _Rail) -> tuple[Path | None, Path | None, Path | None]:
    return rail.power_file, rail.volt_file, rail.curr_file


class Ina3221Meter(Meter):
    """Jetson on-board INA3221 rails read from sysfs (hwmon or iio layout)."""

    name = "ina3221"
    default_rate_hz = 20.0

    def __init__(
        self,
        *,
        root: str | Path = "/",
        rails: Sequence[str] | None = None,
        calibration: float = 1.0,
        rate_hz: float | None = None,
    ) -> None:
        if not (isinstance(calibration, (int, float)) and calibration > 0):
            raise SplitpipeError(f"power calibration must be a positive number, got {calibration!r}")
        self.root = Path(root)
        self.requested = list(rails) if rails else None
        self.calibration = float(calibration)
        self._rails: list[_Rail] = []
        self._total_rails: list[str] = []
        self._layout = ""
        self._notes: list[str] = []
        super().__init__(rate_hz=rate_hz)

    def unavailable_reason(self) -> str | None:
        """Discovers the rails (again: a reboot renumbers hwmon) and picks the total."""
        rails, layout, notes = discover_ina3221(self.root)
        self._rails, self._layout = rails, layout
        if not rails:
            where = self.root / "sys/bus/i2c/drivers"
            extra = f" ({'; '.join(notes)})" if notes else ""
            return (
                f"no INA3221 power monitor under {where} (ina3221 hwmon or ina3221x iio): not a Jetson{extra}"
            )
        try:
            self._total_rails, why = choose_rails([r.label for r in rails], self.requested)
        except UnavailableError as exc:
            return str(exc)
        self._notes = [*notes, *([why] if why else [])]
        return None

    @property
    def rails(self) -> list[str]:
        return [r.label for r in self._rails]

    @property
    def source(self) -> str:
        return f"ina3221:{'+'.join(self._total_rails) or '?'}"

    def note(self) -> str:
        parts = [*self._notes]
        if self.calibration == 1.0:
            parts.append(_UNCALIBRATED)
        else:
            parts.append(f"readings x {self.calibration:g} (board calibration)")
        return "; ".join(parts)

    def _read(self) -> Reading:
        return {rail.label: rail.watts() * self.calibration for rail in self._rails}

    def _total(self, reading: Reading) -> float:
        return sum(reading[r] for r in self._total_rails if r in reading)


# -- tegrastats ------------------------------------------------------------------------------

# "POM_5V_IN 2478/2478" (L4T 32, mW without a unit) and "VDD_IN 5012mW/5012mW" (JetPack 5+):
# current/average. The look-ahead keeps "RAM 2104/3956MB" and "IRAM 0/252kB" out.
_TEGRA_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*)\s+(\d+(?:\.\d+)?)(?:mW)?/(\d+(?:\.\d+)?)(?:mW)?(?=\s|$)")
_NOT_POWER = {"RAM", "SWAP", "IRAM", "LFB", "NC"}


def parse_tegrastats_line(line: str) -> dict[str, tuple[float, float]]:
    """Power rails in one tegrastats line: rail -> (current W, running average W)."""
    out = {}
    for name, cur, avg in _TEGRA_RAIL.findall(line):
        if name in _NOT_POWER:
            continue
        out[name] = (float(cur) / 1e3, float(avg) / 1e3)
    return out


def tegrastats_log_energy(
    lines: Iterable[str], interval_s: float, rails: Sequence[str] | None = None, calibration: float = 1.0
) -> EnergySample:
    """Energy over a saved ``tegrastats --logfile`` whose lines are ``interval_s`` apart
    (trapezoid over the instantaneous readings)."""
    if interval_s <= 0:
        raise SplitpipeError(f"tegrastats interval must be positive, got {interval_s}")
    readings = [r for r in (parse_tegrastats_line(line) for line in lines) if r]
    if not readings:
        raise SplitpipeError("no power rails in the tegrastats log")
    chosen, why = choose_rails(list(readings[0]), rails)
    totals = [sum(r[name][0] for name in chosen if name in r) * calibration for r in readings]
    joules = sum(0.5 * (a + b) * interval_s for a, b in itertools.pairwise(totals))
    covered = interval_s * (len(totals) - 1)
    notes = [n for n in (why, _UNCALIBRATED if calibration == 1.0 else "") if n]
    return EnergySample(
        joules=joules,
        duration_s=covered,
        mean_w=joules / covered if covered else totals[0],
        source=f"tegrastats-log:{'+'.join(chosen)}",
        measured=True,
        samples=len(totals),
        covered_s=covered,
        complete=len(totals) >= 2,
        note="; ".join(notes),
    )


class TegrastatsMeter(Meter):
    """Fallback for Jetsons whose sysfs is not readable: runs ``tegrastats`` and parses its lines.

    tegrastats prints one line per interval; between lines the last reading is held, so the
    time resolution is the interval (default 100 ms), coarser than the sysfs meter's.
    """

    name = "tegrastats"
    default_rate_hz = 20.0

    def __init__(
        self,
        *,
        command: Sequence[str] | None = None,
        interval_ms: int = 100,
        rails: Sequence[str] | None = None,
        calibration: float = 1.0,
        rate_hz: float | None = None,
    ) -> None:
        if interval_ms < 1:
            raise SplitpipeError(f"tegrastats interval must be >= 1 ms, got {interval_ms}")
        self.interval_ms = interval_ms
        self.command = list(command) if command else ["tegrastats", "--interval", str(interval_ms)]
        self.requested = list(rails) if rails else None
        self.calibration = float(calibration)
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._latest: dict[str, tuple[float, float]] | None = None
        self._got_line = threading.Event()
        self._eof = False
        self._total_rails: list[str] = []
        self._why = ""
        super().__init__(rate_hz=rate_hz)

    def unavailable_reason(self) -> str | None:
        exe = self.command[0]
        if shutil.which(exe) is None and not Path(exe).is_file():
            return f"{exe} not found on PATH (not a Jetson, or the L4T tools are not installed)"
        return None

    @property
    def source(self) -> str:
        return f"tegrastats:{'+'.join(self._total_rails) or '?'}"

    def note(self) -> str:
        parts = [f"held between tegrastats lines ({self.interval_ms} ms apart)"]
        if self._why:
            parts.append(self._why)
        parts.append(_UNCALIBRATED if self.calibration == 1.0 else f"readings x {self.calibration:g}")
        return "; ".join(parts)

    def _on_start(self) -> None:
        self._latest, self._eof = None, False
        self._got_line.clear()
        self._proc = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1
        )
        self._reader = threading.Thread(target=self._read_lines, name="tegrastats-reader", daemon=True)
        self._reader.start()
        timeout = max(2.0, 3 * self.interval_ms / 1e3)
        if not self._got_line.wait(timeout) or self._latest is None:
            self._on_stop()
            raise UnavailableError(f"{' '.join(self.command)} printed no power rails within {timeout:.1f} s")
        try:
            self._total_rails, self._why = choose_rails(list(self._latest), self.requested)
        except UnavailableError:
            self._on_stop()
            raise

    def _read_lines(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            parsed = parse_tegrastats_line(line)
            if parsed:
                self._latest = parsed
                self._got_line.set()
        self._eof = True
        self._got_line.set()

    def _read(self) -> Reading:
        if self._eof:
            code = self._proc.poll() if self._proc else None
            raise SensorLost(f"tegrastats stopped (exit code {code})")
        latest = self._latest or {}
        return {rail: cur * self.calibration for rail, (cur, _avg) in latest.items()}

    def _total(self, reading: Reading) -> float:
        return sum(reading[r] for r in self._total_rails if r in reading)

    def _on_stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=2)
            self._reader = None
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()
