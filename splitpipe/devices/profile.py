"""Device profiles: what a target can do, validated from JSON data files into frozen dataclasses.

A profile feeds the planner's analytic cost model (per-node time from FLOPs and bytes against
peak compute and memory bandwidth, scaled by an achievable efficiency) and its energy model
(idle, loaded and radio power). A profile written by ``splitpipe profile`` on a real device
also carries measured per-operator-class throughput, which replaces the peak figures.

Built-in profiles live in ``profiles/*.json`` with the public source of every figure;
``local`` is this machine, measured on demand (:func:`splitpipe.devices.microbench.local_profile`).
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from splitpipe.errors import SplitpipeError, choices

#: operator classes that ``splitpipe profile`` measures and the cost model distinguishes
OP_CLASSES = ("conv", "dwconv", "matmul", "elementwise", "pool")
#: precisions a peak figure may be given for
PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8")
ROLES = ("device", "server")


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
    #: memory bandwidth, GB/s (public figure, or measured by ``splitpipe profile``)
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
    #: fixed cost per runtime call (one ``session.run`` of a head or tail), microseconds
    run_overhead_us: float = 0.0
    #: measured GFLOP/s per operator class (from ``splitpipe profile``); empty if analytic only.
    #: These are achieved rates: apply no efficiency factor to them.
    measured_gflops: dict[str, float] = field(default_factory=dict)
    #: per operator class, the measured points as [FLOPs of one op, achieved GFLOP/s], sorted
    measured_points: dict[str, list[list[float]]] = field(default_factory=dict)
    #: per operator class, the cost of a tensor that enters or leaves a separately run graph
    #: (a head, a tail) at a node of that class, microseconds per MB (1e6 bytes): the input
    #: copy, layout reorders (NCHWc on x86) and output write that no node inside a model pays.
    #: Measured by ``splitpipe profile``; empty: not modelled.
    boundary_us_per_mb: dict[str, float] = field(default_factory=dict)
    #: True where power figures come from a meter on the device, not from public data
    measured_power: bool = False
    #: power-monitor rails whose sum is the board's input power (Jetson INA3221 labels)
    power_rails: tuple[str, ...] = ()
    #: factor applied to on-board sensor readings (found against an external meter); 1 = none
    power_calibration: float = 1.0
    #: where each public figure comes from
    sources: dict[str, str] = field(default_factory=dict)
    #: how a measured profile was made (tool, runtime version, threads, every point's timing)
    measurement: dict[str, Any] = field(default_factory=dict)

    @property
    def measured(self) -> bool:
        """Whether per-node latency comes from measurements on the device."""
        return bool(self.measured_gflops)

    def achieved_gflops(self, op_class: str, flops: float | None = None) -> float | None:
        """Measured throughput of ``op_class`` for an op of ``flops``, or None if not measured.

        Small ops run at lower throughput than large ones; with measured points the rate is
        interpolated linearly in log(FLOPs) between them and held flat beyond the ends.
        """
        points = self.measured_points.get(op_class)
        if flops is None or not points or flops <= 0:
            return self.measured_gflops.get(op_class)
        xs = [math.log(p[0]) for p in points]
        x = math.log(flops)
        i = bisect.bisect_left(xs, x)
        if i == 0:
            return points[0][1]
        if i == len(xs):
            return points[-1][1]
        x0, x1 = xs[i - 1], xs[i]
        y0, y1 = points[i - 1][1], points[i][1]
        return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["runtimes"] = list(self.runtimes)
        out["power_rails"] = list(self.power_rails)
        return out


_REQUIRED = (
    "name",
    "description",
    "role",
    "cpu_cores",
    "cpu_ghz",
    "peak_gflops",
    "mem_bandwidth_gbs",
    "memory_bytes",
    "idle_w",
    "active_w",
)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check(origin: str, key: str, ok: bool, want: str, got: Any) -> None:
    if not ok:
        raise SplitpipeError(f"{origin}: field {key!r} must be {want}, got {got!r}")


def _per_class(data: dict[str, Any], origin: str, key: str) -> dict[str, Any]:
    """``data[key]`` (default empty): an object keyed by operator classes."""
    value = data.get(key, {})
    _check(origin, key, isinstance(value, dict), "an object", value)
    bad = sorted(set(value) - set(OP_CLASSES))
    if bad:
        raise SplitpipeError(
            f"{origin}: unknown operator class(es) {bad} in '{key}'; accepted: {list(OP_CLASSES)}"
        )
    return dict(value)


def profile_from_json(data: dict[str, Any], origin: str) -> DeviceProfile:
    """Validate a profile's JSON object; errors are one line naming the file and the field."""
    if not isinstance(data, dict):
        raise SplitpipeError(f"{origin}: a device profile must be a JSON object, got {type(data).__name__}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise SplitpipeError(f"{origin}: device profile lacks field(s) {', '.join(missing)}")
    known = set(DeviceProfile.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise SplitpipeError(
            f"{origin}: unknown device profile field(s) {unknown}; accepted: {sorted(known)}"
        )
    for key in ("name", "description"):
        _check(
            origin,
            key,
            isinstance(data[key], str) and bool(data[key].strip()),
            "a non-empty string",
            data[key],
        )
    if data["role"] not in ROLES:
        raise SplitpipeError(f"{origin}: field 'role' must be one of {list(ROLES)}, got {data['role']!r}")
    for key in ("cpu_cores", "memory_bytes"):
        value = data[key]
        _check(
            origin,
            key,
            isinstance(value, int) and not isinstance(value, bool) and value > 0,
            "a positive integer",
            value,
        )
    for key in ("cpu_ghz", "mem_bandwidth_gbs", "idle_w", "active_w"):
        _check(origin, key, _is_number(data[key]) and data[key] > 0, "a positive number", data[key])
    for key in ("radio_w", "node_overhead_us", "run_overhead_us"):
        if key in data:
            _check(origin, key, _is_number(data[key]) and data[key] >= 0, "a number >= 0", data[key])
    for key in ("compute_efficiency", "memory_efficiency"):
        if key in data:
            _check(origin, key, _is_number(data[key]) and 0 < data[key] <= 1, "a number in (0, 1]", data[key])
    if "power_calibration" in data:
        value = data["power_calibration"]
        _check(origin, "power_calibration", _is_number(value) and value > 0, "a positive number", value)
    if data["active_w"] < data["idle_w"]:
        raise SplitpipeError(
            f"{origin}: field 'active_w' ({data['active_w']}) must not be below 'idle_w' ({data['idle_w']})"
        )
    peak = data["peak_gflops"]
    if not isinstance(peak, dict) or "fp32" not in peak:
        raise SplitpipeError(f"{origin}: field 'peak_gflops' must map precisions (at least fp32) to GFLOP/s")
    bad = sorted(set(peak) - set(PRECISIONS))
    if bad:
        raise SplitpipeError(
            f"{origin}: unknown precision(s) {bad} in 'peak_gflops'; accepted: {list(PRECISIONS)}"
        )
    for key, value in peak.items():
        _check(origin, f"peak_gflops.{key}", _is_number(value) and value > 0, "a positive number", value)
    measured = _per_class(data, origin, "measured_gflops")
    for key, value in measured.items():
        _check(origin, f"measured_gflops.{key}", _is_number(value) and value > 0, "a positive number", value)
    points = _per_class(data, origin, "measured_points")
    clean_points: dict[str, list[list[float]]] = {}
    for key, rows in points.items():
        ok = isinstance(rows, list) and all(
            isinstance(r, list) and len(r) == 2 and all(_is_number(v) and v > 0 for v in r) for r in rows
        )
        _check(
            origin, f"measured_points.{key}", ok, "a list of [flops, gflops] pairs of positive numbers", rows
        )
        clean_points[key] = sorted([float(r[0]), float(r[1])] for r in rows)
    boundary = _per_class(data, origin, "boundary_us_per_mb")
    for key, value in boundary.items():
        _check(origin, f"boundary_us_per_mb.{key}", _is_number(value) and value >= 0, "a number >= 0", value)
    for key in ("runtimes", "power_rails"):
        if key in data:
            value = data[key]
            _check(
                origin,
                key,
                isinstance(value, list) and all(isinstance(v, str) for v in value),
                "a list of strings",
                value,
            )
    for key in ("sources", "measurement"):
        if key in data:
            _check(origin, key, isinstance(data[key], dict), "an object", data[key])
    if "sources" in data:
        _check(
            origin,
            "sources",
            all(isinstance(v, str) for v in data["sources"].values()),
            "an object of strings",
            data["sources"],
        )
    if "measured_power" in data:
        _check(
            origin,
            "measured_power",
            isinstance(data["measured_power"], bool),
            "true or false",
            data["measured_power"],
        )
    fields = dict(data)
    fields["runtimes"] = tuple(data.get("runtimes", ("ort",)))
    fields["power_rails"] = tuple(data.get("power_rails", ()))
    fields["measured_points"] = clean_points
    fields["peak_gflops"] = {k: float(v) for k, v in peak.items()}
    fields["measured_gflops"] = {k: float(v) for k, v in measured.items()}
    fields["boundary_us_per_mb"] = {k: float(v) for k, v in boundary.items()}
    return DeviceProfile(**fields)


def builtin_profile_names() -> list[str]:
    folder = resources.files("splitpipe.devices") / "profiles"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def read_profile_file(path: Path) -> DeviceProfile:
    """A profile from a JSON file; every problem is a one-line SplitpipeError naming the file."""
    if not path.is_file():
        raise SplitpipeError(f"device profile file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SplitpipeError(f"{path}: not a readable JSON device profile ({exc})") from None
    return profile_from_json(data, str(path))


def load_profile(spec: str) -> DeviceProfile:
    """A built-in profile by name (``rpi4``), ``local`` (this machine, measured and cached),
    or a JSON file written by ``splitpipe profile``."""
    if spec.endswith(".json") or "/" in spec:
        return read_profile_file(Path(spec))
    if spec == "local":
        from splitpipe.devices.microbench import local_profile

        return local_profile()
    names = builtin_profile_names()
    if spec not in names:
        raise choices("device", spec, ["local", *names, "PATH.json"])
    text = (resources.files("splitpipe.devices") / "profiles" / f"{spec}.json").read_text(encoding="utf-8")
    return profile_from_json(json.loads(text), f"profile {spec}")
