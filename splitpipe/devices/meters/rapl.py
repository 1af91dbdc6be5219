"""Intel RAPL energy counters through the powercap interface.

``/sys/class/powercap/intel-rapl:<P>`` is package P (``name`` = ``package-P``),
``intel-rapl:<P>:<D>`` its sub-domains (core, uncore, dram); ``energy_uj`` counts microjoules
and wraps to zero past ``max_energy_range_uj`` (every few minutes under load: the sampling thread
reads often enough to see each wrap). Since Linux 5.10 ``energy_uj`` is readable by root only
(CVE-2020-8694, the PLATYPUS power side channel). AMD Zen CPUs expose the same interface.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from splitpipe.devices.meters.base import Meter, Reading

ROOT_ONLY = (
    "energy_uj is readable by root only since Linux 5.10 (CVE-2020-8694): run as root or grant "
    "read access (e.g. a udev rule or chmod o+r on energy_uj)"
)


@dataclass(frozen=True)
class _Zone:
    key: str
    energy_file: Path
    wrap_j: float | None


def discover_rapl(root: str | Path = "/", domains: Sequence[str] | None = None) -> list[_Zone]:
    """Zones to sum: every package, plus DRAM sub-domains, unless ``domains`` names others."""
    zones = []
    base = Path(root) / "sys/class/powercap"
    packages: dict[str, str] = {}
    for zone in sorted(base.glob("intel-rapl:*")):
        match = re.fullmatch(r"intel-rapl:(\d+)(?::(\d+))?", zone.name)
        if not match or not (zone / "energy_uj").exists():
            continue
        try:
            name = (zone / "name").read_text().strip()
        except OSError:
            continue
        top = match.group(2) is None
        if top:
            packages[match.group(1)] = name
        key = name if top else f"{packages.get(match.group(1), 'zone-' + match.group(1))}/{name}"
        wanted = (
            (name in domains or key in domains)
            if domains
            else ((top and name.startswith("package")) or name == "dram")
        )
        if not wanted:
            continue
        wrap = None
        with contextlib.suppress(OSError, ValueError):
            wrap = float((zone / "max_energy_range_uj").read_text().strip()) / 1e6
        zones.append(_Zone(key, zone / "energy_uj", wrap))
    return zones


class RaplMeter(Meter):
    """CPU package (and DRAM) energy from RAPL counters: not the rest of the machine."""

    name = "rapl"
    kind = "counter"
    default_rate_hz = 10.0

    def __init__(
        self, *, root: str | Path = "/", domains: Sequence[str] | None = None, rate_hz: float | None = None
    ) -> None:
        self.root = Path(root)
        self.domains = list(domains) if domains else None
        self._zones: list[_Zone] = []
        super().__init__(rate_hz=rate_hz)

    def unavailable_reason(self) -> str | None:
        self._zones = discover_rapl(self.root, self.domains)
        if not self._zones:
            where = self.root / "sys/class/powercap"
            wanted = f" named {self.domains}" if self.domains else ""
            return (
                f"no Intel RAPL zones{wanted} under {where} (not an x86 host, the intel_rapl driver "
                "is not loaded, or a virtual machine)"
            )
        try:
            for zone in self._zones:
                zone.energy_file.read_text()
        except PermissionError:
            return ROOT_ONLY
        except OSError as exc:
            return f"cannot read {exc.filename}: {exc.strerror}"
        return None

    @property
    def source(self) -> str:
        return "rapl:" + "+".join(z.key for z in self._zones)

    def note(self) -> str:
        return "CPU package and DRAM energy only: not the rest of the machine"

    def _read(self) -> Reading:
        return {z.key: float(z.energy_file.read_text().strip()) / 1e6 for z in self._zones}

    def _wrap(self, rail: str) -> float | None:
        for zone in self._zones:
            if zone.key == rail:
                return zone.wrap_j
        return None
