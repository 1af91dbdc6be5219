"""CPU cgroups for the two sides: a CFS quota (the device's speed) and a cpuset (its core).

Supports cgroup v1 (``cpu``, ``cpuacct`` and ``cpuset`` hierarchies, mounted together or
apart) and cgroup v2 (``cpu.max``, ``cpuset.cpus``, ``cpu.stat``), whichever holds the ``cpu``
controller; v1 wins where both are mounted, because a controller bound to v1 is missing
from v2. Groups sit directly below the hierarchy's root under a name derived from the
testbed's, so that ``down`` finds them after a crash.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from splitpipe.errors import UnavailableError
from splitpipe.testbed.link import TestbedError

_LOGGER = logging.getLogger(__name__)

_V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset")
#: CPU weight of the testbed's groups: ten times the default (v1 cpu.shares 1024, v2 cpu.weight 100)
WEIGHT_V1 = 10 * 1024
WEIGHT_V2 = 10 * 100


@dataclass(frozen=True)
class CgroupLayout:
    """Where the controllers are: v1 maps each controller to its mount, v2 has one root."""

    version: int
    mounts: dict[str, Path] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.mounts["unified"] if self.version == 2 else self.mounts["cpuset"]

    def allowed_cpus(self) -> set[int]:
        effective = self.root / ("cpuset.cpus.effective" if self.version == 2 else "cpuset.effective_cpus")
        path = effective if effective.exists() else self.root / "cpuset.cpus"
        text = path.read_text().strip() if path.exists() else ""
        return parse_cpu_list(text) if text else set(os.sched_getaffinity(0))


def parse_cpu_list(text: str) -> set[int]:
    """'0-2,4' -> {0, 1, 2, 4}"""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def detect(mounts_file: Path = Path("/proc/self/mounts")) -> CgroupLayout:
    """The cgroup layout of this machine, or UnavailableError saying what is missing."""
    v1: dict[str, Path] = {}
    v2: Path | None = None
    for line in mounts_file.read_text().splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        mountpoint, fstype, opts = Path(parts[1]), parts[2], parts[3].split(",")
        if fstype == "cgroup":
            for ctl in _V1_CONTROLLERS:
                if ctl in opts:
                    v1.setdefault(ctl, mountpoint)
        elif fstype == "cgroup2" and v2 is None:
            v2 = mountpoint
    if "cpu" in v1:
        missing = [c for c in _V1_CONTROLLERS if c not in v1]
        if missing:
            raise UnavailableError(f"cgroup v1 controller(s) {', '.join(missing)} not mounted")
        return CgroupLayout(1, v1)
    if v2 is not None:
        controllers = (v2 / "cgroup.controllers").read_text().split()
        missing = [c for c in ("cpu", "cpuset") if c not in controllers]
        if not missing:
            return CgroupLayout(2, {"unified": v2})
        raise UnavailableError(f"cgroup v2 at {v2} lacks the {', '.join(missing)} controller(s)")
    raise UnavailableError("no cgroup hierarchy with the cpu controller is mounted")


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise TestbedError(f"cannot write {value!r} to {path}: {exc.strerror}") from None


@dataclass(frozen=True)
class CpuGroup:
    """One side's cgroup: its quota, its cores, its processes, its CPU time."""

    layout: CgroupLayout
    name: str

    def _dir(self, controller: str) -> Path:
        if self.layout.version == 2:
            return self.layout.mounts["unified"] / self.name
        return self.layout.mounts[controller] / self.name

    def dirs(self) -> list[Path]:
        """Distinct directories of this group (v1 controllers may share a mount)."""
        ctls = ("unified",) if self.layout.version == 2 else _V1_CONTROLLERS
        seen: list[Path] = []
        for ctl in ctls:
            path = self._dir(ctl)
            if path not in seen:
                seen.append(path)
        return seen

    def exists(self) -> bool:
        return any(d.is_dir() for d in self.dirs())

    def create(self, cpus: str, quota_us: int | None, period_us: int) -> None:
        if self.layout.version == 2:
            root = self.layout.mounts["unified"]
            control = root / "cgroup.subtree_control"
            enabled = control.read_text().split() if control.exists() else []
            for ctl in ("cpuset", "cpu"):
                if ctl not in enabled:
                    _write(control, f"+{ctl}")
        for d in self.dirs():
            d.mkdir(exist_ok=True)
        cpuset = self._dir("cpuset")
        if self.layout.version == 1:
            # a v1 cpuset takes no task until both its cpus and its memory nodes are set
            mems = (self.layout.mounts["cpuset"] / "cpuset.mems").read_text().strip()
            _write(cpuset / "cpuset.mems", mems)
        _write(cpuset / "cpuset.cpus", cpus)
        # ten times the default weight: other work on the same core must not eat into the
        # share being emulated (the quota still caps the device)
        if self.layout.version == 2:
            _write(self._dir("cpu") / "cpu.weight", str(WEIGHT_V2))
        else:
            _write(self._dir("cpu") / "cpu.shares", str(WEIGHT_V1))
        self.set_quota(quota_us, period_us)

    def set_quota(self, quota_us: int | None, period_us: int) -> None:
        cpu = self._dir("cpu")
        if self.layout.version == 2:
            _write(cpu / "cpu.max", f"{quota_us if quota_us is not None else 'max'} {period_us}")
            return
        # lift the quota first: the kernel may refuse a period that the old quota does not fit
        _write(cpu / "cpu.cfs_quota_us", "-1")
        _write(cpu / "cpu.cfs_period_us", str(period_us))
        _write(cpu / "cpu.cfs_quota_us", str(quota_us if quota_us is not None else -1))

    def quota(self) -> tuple[int | None, int] | None:
        """(quota_us or None, period_us) as the kernel has it, None if the group is gone."""
        cpu = self._dir("cpu")
        try:
            if self.layout.version == 2:
                quota, period = (cpu / "cpu.max").read_text().split()
                return (None if quota == "max" else int(quota)), int(period)
            q = int((cpu / "cpu.cfs_quota_us").read_text())
            return (None if q < 0 else q), int((cpu / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            return None

    def cpus(self) -> str | None:
        try:
            return (self._dir("cpuset") / "cpuset.cpus").read_text().strip()
        except OSError:
            return None

    def procs_files(self) -> list[Path]:
        """Files a process writes its pid into to join every hierarchy of the group."""
        return [d / "cgroup.procs" for d in self.dirs()]

    def pids(self) -> list[int]:
        found: set[int] = set()
        for f in self.procs_files():
            try:
                found.update(int(tok) for tok in f.read_text().split())
            except (OSError, ValueError):
                continue
        return sorted(found)

    def add(self, pid: int) -> None:
        for f in self.procs_files():
            _write(f, str(pid))

    def usage_ns(self) -> int:
        """CPU time used by the group's processes so far, nanoseconds."""
        if self.layout.version == 2:
            for line in (self._dir("cpu") / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) * 1000
            raise TestbedError(f"{self._dir('cpu')}/cpu.stat has no usage_usec")
        return int((self._dir("cpuacct") / "cpuacct.usage").read_text())

    def remove(self, timeout_s: float = 3.0) -> bool:
        """rmdir every directory of the group (waits while exiting tasks leave); False if none existed."""
        existed = False
        deadline = time.monotonic() + timeout_s
        for d in self.dirs():
            while d.is_dir():
                existed = True
                try:
                    d.rmdir()
                except OSError as exc:
                    if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise TestbedError(f"cannot remove cgroup {d}: {exc.strerror}") from None
                    time.sleep(0.05)
        return existed
