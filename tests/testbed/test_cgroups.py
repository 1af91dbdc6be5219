"""cgroup layout detection and the files a group writes, against fake cgroup trees.

The real hierarchies are exercised by test_testbed.py (root only); these check both cgroup
versions, whichever this machine happens to have.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from splitpipe.errors import UnavailableError
from splitpipe.testbed.cgroups import CgroupLayout, CpuGroup, detect, parse_cpu_list


def _mounts(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mounts"
    path.write_text(text)
    return path


def test_detect_v1_with_separate_and_joint_mounts(tmp_path: Path) -> None:
    apart = _mounts(
        tmp_path,
        (
            "cgroup /sys/fs/cgroup/cpu cgroup rw,nosuid,cpu 0 0\n"
            "cgroup /sys/fs/cgroup/cpuacct cgroup rw,cpuacct 0 0\n"
            "cgroup /sys/fs/cgroup/cpuset cgroup rw,cpuset 0 0\n"
            "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
        ),
    )
    layout = detect(apart)
    assert layout.version == 1
    assert layout.mounts == {
        "cpu": Path("/sys/fs/cgroup/cpu"),
        "cpuacct": Path("/sys/fs/cgroup/cpuacct"),
        "cpuset": Path("/sys/fs/cgroup/cpuset"),
    }
    joint = _mounts(
        tmp_path,
        (
            "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n"
            "cgroup /sys/fs/cgroup/cpuset cgroup rw,cpuset 0 0\n"
        ),
    )
    layout = detect(joint)
    group = CpuGroup(layout, "g")
    # cpu and cpuacct share a directory: the group has two, not three
    assert group.dirs() == [Path("/sys/fs/cgroup/cpu,cpuacct/g"), Path("/sys/fs/cgroup/cpuset/g")]


def test_detect_v2_needs_cpu_and_cpuset(tmp_path: Path) -> None:
    root = tmp_path / "cg2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    mounts = _mounts(tmp_path, f"cgroup2 {root} cgroup2 rw,nsdelegate 0 0\n")
    assert detect(mounts) == CgroupLayout(2, {"unified": root})
    (root / "cgroup.controllers").write_text("io memory pids\n")
    with pytest.raises(UnavailableError, match="lacks the cpu, cpuset controller"):
        detect(mounts)


def test_detect_nothing(tmp_path: Path) -> None:
    with pytest.raises(UnavailableError, match="no cgroup hierarchy with the cpu controller"):
        detect(_mounts(tmp_path, "proc /proc proc rw 0 0\n"))


def test_v2_group_writes_cpu_max_and_cpuset(tmp_path: Path) -> None:
    root = tmp_path / "cg2"
    root.mkdir()
    (root / "cgroup.subtree_control").write_text("memory\n")
    (root / "cpuset.cpus.effective").write_text("0-3\n")
    layout = CgroupLayout(2, {"unified": root})
    assert layout.allowed_cpus() == {0, 1, 2, 3}
    group = CpuGroup(layout, "splitpipe-x-device")
    group.create("1", 2500, 10_000)
    d = root / "splitpipe-x-device"
    assert (d / "cpu.max").read_text() == "2500 10000"
    assert (d / "cpuset.cpus").read_text() == "1"
    assert (d / "cpu.weight").read_text() == "1000"
    assert group.quota() == (2500, 10_000)
    group.set_quota(None, 10_000)
    assert (d / "cpu.max").read_text() == "max 10000"
    assert group.quota() == (None, 10_000)
    # a fake file keeps only the last write; the real one accumulates "+cpuset" and "+cpu"
    assert (root / "cgroup.subtree_control").read_text() == "+cpu"
    assert group.procs_files() == [d / "cgroup.procs"]
    (d / "cpu.stat").write_text("usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n")
    assert group.usage_ns() == 1_234_000
    (d / "cgroup.procs").write_text("10\n11\n")
    assert group.pids() == [10, 11]


def test_v1_group_writes_quota_period_mems_and_cpus(tmp_path: Path) -> None:
    mounts = {c: tmp_path / c for c in ("cpu", "cpuacct", "cpuset")}
    for m in mounts.values():
        m.mkdir()
    (mounts["cpuset"] / "cpuset.mems").write_text("0\n")
    layout = CgroupLayout(1, mounts)
    group = CpuGroup(layout, "g")
    group.create("0", 1000, 20_000)
    assert (mounts["cpu"] / "g" / "cpu.cfs_period_us").read_text() == "20000"
    assert (mounts["cpu"] / "g" / "cpu.cfs_quota_us").read_text() == "1000"
    assert (mounts["cpu"] / "g" / "cpu.shares").read_text() == "10240"
    assert (mounts["cpuset"] / "g" / "cpuset.mems").read_text() == "0"
    assert (mounts["cpuset"] / "g" / "cpuset.cpus").read_text() == "0"
    assert group.quota() == (1000, 20_000)
    assert group.cpus() == "0"
    (mounts["cpuacct"] / "g" / "cpuacct.usage").write_text("987654321\n")
    assert group.usage_ns() == 987_654_321
    assert len(group.procs_files()) == 3


def test_remove_is_idempotent(tmp_path: Path) -> None:
    mounts = {c: tmp_path / c for c in ("cpu", "cpuacct", "cpuset")}
    for m in mounts.values():
        (m / "g").mkdir(parents=True)
    group = CpuGroup(CgroupLayout(1, mounts), "g")
    assert group.exists()
    assert group.remove() is True
    assert not group.exists()
    assert group.remove() is False


def test_parse_cpu_list() -> None:
    assert parse_cpu_list("0-2,4,6-7") == {0, 1, 2, 4, 6, 7}
    assert parse_cpu_list("1\n") == {1}
