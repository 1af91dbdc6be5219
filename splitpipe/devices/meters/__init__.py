"""Power and energy meters: measured where a sensor exists, honestly estimated where none does.

Every meter has ``is_available()``, a sampling thread at ``rate_hz``, and
``start()`` / ``stop() -> EnergySample`` (joules, duration, mean watts, source, measured).
:func:`detect_meter` picks the best meter this machine has; :func:`available_meters` says, for
each, why not. Only the standard library, numpy and psutil are imported here: the agent uses
this on a device without the heavy extras.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from splitpipe.devices.meters.base import EnergySample, Meter, NullMeter, SensorLost
from splitpipe.devices.meters.estimated import EstimatedMeter
from splitpipe.devices.meters.jetson import Ina3221Meter, TegrastatsMeter, parse_tegrastats_line
from splitpipe.devices.meters.nvml import NvmlMeter
from splitpipe.devices.meters.pi import Pi5PmicMeter, parse_pmic_adc
from splitpipe.devices.meters.rapl import RaplMeter
from splitpipe.devices.profile import DeviceProfile
from splitpipe.errors import UnavailableError, choices

__all__ = [
    "EnergySample",
    "EstimatedMeter",
    "Ina3221Meter",
    "Meter",
    "NullMeter",
    "NvmlMeter",
    "Pi5PmicMeter",
    "RaplMeter",
    "SensorLost",
    "TegrastatsMeter",
    "available_meters",
    "create_meter",
    "detect_meter",
    "meter_names",
    "parse_pmic_adc",
    "parse_tegrastats_line",
]


_CLASSES: dict[str, type[Meter]] = {
    # in the order detect_meter prefers them: on-board sensors of the whole board first, then
    # parts of the machine (CPU package, GPU), then the estimate
    "ina3221": Ina3221Meter,
    "tegrastats": TegrastatsMeter,
    "pi5-pmic": Pi5PmicMeter,
    "rapl": RaplMeter,
    "nvml": NvmlMeter,
    "estimated": EstimatedMeter,
    "null": NullMeter,
}


def _defaults(name: str, profile: DeviceProfile | None, root: str | Path) -> dict[str, Any]:
    """Constructor arguments that come from the profile (rails, calibration) and the sysfs root."""
    rails = list(profile.power_rails) if profile and profile.power_rails else None
    calibration = profile.power_calibration if profile else 1.0
    defaults: dict[str, dict[str, Any]] = {
        "ina3221": {"root": root, "rails": rails, "calibration": calibration},
        "tegrastats": {"rails": rails, "calibration": calibration},
        "pi5-pmic": {"calibration": calibration},
        "rapl": {"root": root},
        "nvml": {},
        "estimated": {"profile": profile},
        "null": {},
    }
    return defaults[name]


def meter_names() -> list[str]:
    return list(_CLASSES)


def create_meter(
    name: str, *, profile: DeviceProfile | None = None, root: str | Path = "/", **options: Any
) -> Meter:
    """A meter by name; raises UnavailableError with the reason if it cannot run here.

    ``options`` go to the meter's constructor (e.g. ``rate_hz``, ``rails``, ``command``).
    """
    if name not in _CLASSES:
        raise choices("meter", name, _CLASSES)
    meter = _CLASSES[name](**{**_defaults(name, profile, root), **options})
    reason = meter.unavailable_reason()
    if reason:
        raise UnavailableError(f"meter {name!r} is unavailable: {reason}")
    return meter


def available_meters(profile: DeviceProfile | None = None, root: str | Path = "/") -> dict[str, str | None]:
    """Meter name -> None when usable here, else the reason it is not."""
    out: dict[str, str | None] = {}
    for name, cls in _CLASSES.items():
        try:
            out[name] = cls(**_defaults(name, profile, root)).unavailable_reason()
        except Exception as exc:  # one broken probe must not hide the others
            out[name] = f"probe failed: {type(exc).__name__}: {exc}".splitlines()[0]
    return out


def detect_meter(
    profile: DeviceProfile | None = None, *, root: str | Path = "/", allow_estimate: bool = True
) -> Meter:
    """The best meter available here: a board sensor, RAPL or NVML, else the profile estimate
    (always labelled estimated), else the null meter if ``allow_estimate`` is False."""
    for name, cls in _CLASSES.items():
        if name in ("estimated", "null"):
            break
        try:
            meter = cls(**_defaults(name, profile, root))
            if meter.unavailable_reason() is None:
                return meter
        except Exception:  # a probe that breaks means the meter is not usable here
            continue
    return EstimatedMeter(profile) if allow_estimate else NullMeter()
