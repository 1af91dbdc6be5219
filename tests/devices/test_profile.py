"""Device profiles: every built-in loads and cites its sources; bad files fail in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from splitpipe.devices.profile import (
    OP_CLASSES,
    DeviceProfile,
    builtin_profile_names,
    load_profile,
    profile_from_json,
)
from splitpipe.errors import SplitpipeError

REQUIRED_NAMES = {
    "jetson-nano",
    "jetson-orin-nano",
    "jetson-agx-orin",
    "rpi4",
    "rpi5",
    "x86-server",
    "gpu-server",
}


def test_builtins_present() -> None:
    assert set(builtin_profile_names()) >= REQUIRED_NAMES


@pytest.mark.parametrize("name", builtin_profile_names())
def test_builtin_loads_with_sources(name: str) -> None:
    profile = load_profile(name)
    assert isinstance(profile, DeviceProfile) and profile.name == name
    assert profile.peak_gflops["fp32"] > 0 and profile.mem_bandwidth_gbs > 0
    assert profile.idle_w < profile.active_w
    assert not profile.measured and not profile.measured_power
    # every public figure says where it comes from
    for key in ("cpu", "peak_gflops", "mem_bandwidth_gbs", "memory_bytes", "idle_w", "active_w"):
        assert profile.sources.get(key), f"{name}: no source for {key}"
    # JSON round trip
    again = profile_from_json(json.loads(json.dumps(profile.to_json())), "round trip")
    assert again == profile


def test_jetsons_name_their_power_rails() -> None:
    assert load_profile("jetson-nano").power_rails == ("POM_5V_IN",)
    assert load_profile("jetson-orin-nano").power_rails == ("VDD_IN",)
    assert "VDD_IN" not in load_profile("jetson-agx-orin").power_rails  # AGX Orin has no input rail


def good() -> dict[str, Any]:
    return load_profile("rpi4").to_json()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"cpu_cores": "four"}, "cpu_cores"),
        ({"cpu_cores": 0}, "cpu_cores"),
        ({"cpu_cores": True}, "cpu_cores"),
        ({"memory_bytes": 1.5}, "memory_bytes"),
        ({"mem_bandwidth_gbs": -1}, "mem_bandwidth_gbs"),
        ({"idle_w": "2.7"}, "idle_w"),
        ({"active_w": 1.0}, "active_w"),
        ({"role": "phone"}, "role"),
        ({"name": ""}, "name"),
        ({"peak_gflops": {"fp16": 10}}, "peak_gflops"),
        ({"peak_gflops": {"fp32": 10, "fp8": 20}}, "peak_gflops"),
        ({"peak_gflops": {"fp32": 0}}, "peak_gflops.fp32"),
        ({"compute_efficiency": 1.5}, "compute_efficiency"),
        ({"memory_efficiency": 0}, "memory_efficiency"),
        ({"node_overhead_us": -3}, "node_overhead_us"),
        ({"measured_gflops": {"attention": 3.0}}, "measured_gflops"),
        ({"measured_gflops": {"conv": -3.0}}, "measured_gflops.conv"),
        ({"measured_points": {"conv": [[1, 2, 3]]}}, "measured_points.conv"),
        ({"boundary_us_per_mb": {"attention": 3.0}}, "boundary_us_per_mb"),
        ({"boundary_us_per_mb": {"conv": -1}}, "boundary_us_per_mb.conv"),
        ({"boundary_us_per_mb": [1]}, "boundary_us_per_mb"),
        ({"runtimes": "ort"}, "runtimes"),
        ({"sources": {"idle_w": 3}}, "sources"),
        ({"measured_power": "yes"}, "measured_power"),
        ({"power_calibration": 0}, "power_calibration"),
        ({"turbo": True}, "turbo"),
    ],
)
def test_bad_profile_file_one_line_error(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**good(), **change}))
    with pytest.raises(SplitpipeError) as err:
        load_profile(str(path))
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message and field in message


def test_missing_fields_named(tmp_path: Path) -> None:
    data = good()
    del data["idle_w"], data["peak_gflops"]
    path = tmp_path / "short.json"
    path.write_text(json.dumps(data))
    with pytest.raises(
        SplitpipeError, match=r"short\.json: device profile lacks field\(s\) peak_gflops, idle_w"
    ):
        load_profile(str(path))


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "\udcff"])
def test_unreadable_files(tmp_path: Path, text: str) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(SplitpipeError) as err:
        load_profile(str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_file_and_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(SplitpipeError, match="device profile file not found"):
        load_profile(str(tmp_path / "nope.json"))
    with pytest.raises(SplitpipeError, match=r"unknown device 'jetson-tx9'; accepted: local, gpu-server"):
        load_profile("jetson-tx9")


def test_achieved_gflops_interpolates_in_log_flops() -> None:
    data = good()
    data["measured_gflops"] = {"conv": 20.0}
    data["measured_points"] = {"conv": [[1e8, 30.0], [1e6, 10.0]]}  # unsorted on purpose
    profile = profile_from_json(data, "test")
    assert profile.measured
    assert profile.achieved_gflops("conv") == 20.0
    assert profile.achieved_gflops("conv", 1e7) == pytest.approx(20.0)  # halfway in log space
    assert profile.achieved_gflops("conv", 1e3) == 10.0  # held flat below the smallest point
    assert profile.achieved_gflops("conv", 1e12) == 30.0
    assert profile.achieved_gflops("pool", 1e6) is None
    assert set(OP_CLASSES) == {"conv", "dwconv", "matmul", "elementwise", "pool"}
