"""Raspberry Pi 5 power from its PMIC: ``vcgencmd pmic_read_adc``.

The firmware prints one line per ADC channel, currents and voltages of the same rail under
``<RAIL>_A`` and ``<RAIL>_V``::

       VDD_CORE_A current(7)=0.77000000A
       VDD_CORE_V volt(15)=0.72000000V
       EXT5V_V volt(24)=5.12276000V

Power is the sum of volts x amps over the rails that report both. The 5 V input (EXT5V) has a
voltage but no current, so the figure misses what the board draws on 5 V directly (USB ports,
fan, HATs) and the PMIC's conversion losses: it reads below a USB-C meter. A Raspberry Pi 4 has
no such ADC: measure it with an external USB-C meter.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from splitpipe.devices.meters.base import Meter, Reading, SensorLost
from splitpipe.errors import SplitpipeError

_LINE = re.compile(r"^\s*([A-Za-z0-9_]+?)_([AV])\b[^=]*=\s*([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*[AV]?\s*$")

PI5_NOTE = (
    "sum of PMIC rails (V x A); the 5 V input current is not reported, so USB, fan and other "
    "5 V loads and PMIC conversion losses are not counted"
)


def parse_pmic_adc(text: str) -> tuple[dict[str, float], list[str]]:
    """Watts per rail with both readings, and the rails that have only one of them."""
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        rail, unit, value = match.group(1), match.group(2), float(match.group(3))
        (amps if unit == "A" else volts)[rail] = value
    watts = {rail: volts[rail] * amps[rail] for rail in amps if rail in volts}
    unpaired = sorted((set(amps) | set(volts)) - set(watts))
    return watts, unpaired


class Pi5PmicMeter(Meter):
    """Raspberry Pi 5 PMIC rails through ``vcgencmd pmic_read_adc`` (one subprocess per reading)."""

    name = "pi5-pmic"
    # each reading forks vcgencmd (a few ms of CPU on a Pi 5): keep the rate low
    default_rate_hz = 5.0

    def __init__(
        self,
        *,
        command: Sequence[str] | None = None,
        calibration: float = 1.0,
        rate_hz: float | None = None,
    ) -> None:
        if not (isinstance(calibration, (int, float)) and calibration > 0):
            raise SplitpipeError(f"power calibration must be a positive number, got {calibration!r}")
        self.command = list(command) if command else ["vcgencmd", "pmic_read_adc"]
        self.calibration = float(calibration)
        self._reason: str | None = None
        self._probed = False
        self.unpaired: list[str] = []
        super().__init__(rate_hz=rate_hz)

    def _run_command(self) -> str:
        try:
            done = subprocess.run(self.command, capture_output=True, text=True, timeout=5, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SensorLost(f"{' '.join(self.command)} failed: {exc}") from None
        if done.returncode != 0:
            err = (done.stderr or done.stdout).strip().splitlines()
            raise SensorLost(f"{' '.join(self.command)} exited {done.returncode}: {err[0] if err else ''}")
        return done.stdout

    def unavailable_reason(self) -> str | None:
        if self._probed:
            return self._reason
        exe = self.command[0]
        if shutil.which(exe) is None and not Path(exe).is_file():
            reason: str | None = f"{exe} not found (not Raspberry Pi OS)"
        else:
            try:
                watts, self.unpaired = parse_pmic_adc(self._run_command())
                reason = (
                    None
                    if watts
                    else (
                        "vcgencmd pmic_read_adc reported no rail with both volts and amps "
                        "(not a Raspberry Pi 5: the Pi 4 and earlier have no PMIC ADC)"
                    )
                )
            except SensorLost as exc:
                reason = f"{exc} (not a Raspberry Pi 5, or firmware without pmic_read_adc)"
        self._reason, self._probed = reason, True
        return reason

    @property
    def source(self) -> str:
        return "pi5-pmic:sum"

    def note(self) -> str:
        cal = "" if self.calibration == 1.0 else f"; readings x {self.calibration:g} (board calibration)"
        return PI5_NOTE + cal

    def _read(self) -> Reading:
        watts, self.unpaired = parse_pmic_adc(self._run_command())
        if not watts:
            raise SensorLost("vcgencmd pmic_read_adc returned no rail readings")
        return {rail: w * self.calibration for rail, w in watts.items()}
