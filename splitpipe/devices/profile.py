"""Device profiles: what a target can do, validated from JSON data files into frozen dataclasses.

A profile feeds the planner's analytic cost model (per-node time from FLOPs and bytes against
peak compute and memory bandwidth, scaled by an achievable efficiency) and its energy model
(idle, loaded and radio power). A profile written by ``splitpipe profile`` on a real device
also carries measured per-operator-class throughput, which replaces the peak figures.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from splitpipe.errors import SplitpipeError, choices

#: operator classes that ``splitpipe profile`` measures and the cost model distinguishes
OP_CLASSES = ("conv", "dwconv", "matmul", "elementwise", "pool")


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    #: "device" (runs the head) or "server" (runs the tail); either may be used for both
    role: str
    cpu_cores: int
    cpu_ghz: float
    #: peak compute of the accelerator the runtime uses, GFLOP/s per precision (fp32, fp16, int8)
    peak_gflops: dict[str, float]
    #: memory bandwidth, GB/s
    mem_bandwidth_gbs: float
    memory_bytes: int
    #: power drawn idle and fully loaded by inference, watts; radio power while transmitting
    idle_w: float
    active_w: float
    radio_w: float = 0.0
    runtimes: tuple[str, ...] = ("ort",)
    #: fraction of peak compute and bandwidth that batch-1 inference reaches (analytic model)
    compute_efficiency: float = 0.3
    memory_efficiency: float = 0.6
    #: fixed cost per executed node (kernel launch, scheduling), microseconds
    node_overhead_us: float = 10.0
    #: measured GFLOP/s per operator class (from ``splitpipe profile``); empty if analytic only
    measured_gflops: dict[str, float] = field(default_factory=dict)
    #: True where power figures come from a meter on the device, not from public data
    measured_power: bool = False
    #: where each public figure comes from
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        """Whether per-node latency comes from measurements on the device."""
        return bool(self.measured_gflops)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["runtimes"] = list(self.runtimes)
        return out


_REQUIRED = ("name", "description", "role", "cpu_cores", "cpu_ghz", "peak_gflops",
             "mem_bandwidth_gbs", "memory_bytes", "idle_w", "active_w")


def profile_from_json(data: dict[str, Any], origin: str) -> DeviceProfile:
    """Validate a profile's JSON object; errors name the file and the field."""
    if not isinstance(data, dict):
        raise SplitpipeError(f"{origin}: a device profile must be a JSON object")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise SplitpipeError(f"{origin}: device profile lacks {', '.join(missing)}")
    known = set(DeviceProfile.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise SplitpipeError(f"{origin}: unknown device profile field(s) {unknown}; accepted: {sorted(known)}")
    if data["role"] not in ("device", "server"):
        raise SplitpipeError(f"{origin}: role must be 'device' or 'server', got {data['role']!r}")
    for key in ("cpu_ghz", "mem_bandwidth_gbs", "idle_w", "active_w"):
        if not isinstance(data[key], (int, float)) or data[key] <= 0:
            raise SplitpipeError(f"{origin}: {key} must be a positive number, got {data[key]!r}")
    peak = data["peak_gflops"]
    if not isinstance(peak, dict) or "fp32" not in peak or not all(
        isinstance(v, (int, float)) and v > 0 for v in peak.values()
    ):
        raise SplitpipeError(f"{origin}: peak_gflops must map precisions (at least fp32) to positive numbers")
    measured = data.get("measured_gflops", {})
    bad = sorted(set(measured) - set(OP_CLASSES))
    if bad:
        raise SplitpipeError(f"{origin}: unknown operator class(es) {bad} in measured_gflops; accepted: {list(OP_CLASSES)}")
    fields = dict(data)
    fields["runtimes"] = tuple(data.get("runtimes", ("ort",)))
    return DeviceProfile(**fields)


def builtin_profile_names() -> list[str]:
    folder = resources.files("splitpipe.devices") / "profiles"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def load_profile(spec: str) -> DeviceProfile:
    """A built-in profile by name (``rpi4``), or a JSON file written by ``splitpipe profile``."""
    if spec.endswith(".json") or "/" in spec:
        path = Path(spec)
        if not path.is_file():
            raise SplitpipeError(f"device profile file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SplitpipeError(f"{path}: not a readable JSON device profile ({exc})") from None
        return profile_from_json(data, str(path))
    names = builtin_profile_names()
    if spec not in names:
        raise choices("device", spec, ["local", *names, "PATH.json"])
    text = (resources.files("splitpipe.devices") / "profiles" / f"{spec}.json").read_text()
    return profile_from_json(json.loads(text), f"profile {spec}")
