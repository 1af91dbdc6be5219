"""Micro-benchmarks that measure a device profile with ONNX Runtime: ``splitpipe profile`` and ``local``.

What is measured, per operator class of :data:`~splitpipe.devices.profile.OP_CLASSES`, at a few
sizes typical of CNN layers: achieved GFLOP/s (FLOP convention shared with the planner: 1 FLOP per
multiply and per add; conv ``2*N*Cout*Hout*Wout*(Cin/groups)*kh*kw``, matmul ``2*M*N*K``,
elementwise one per output element, pool one per output element and kernel tap), memory copy
bandwidth, the fixed cost of one runtime call and of one node, and, where a meter exists, idle
and loaded power.

How. The models are tiny pre-built ``.onnx`` files shipped as package data (a device has no
``onnx`` package; ``make_microbench.py`` writes them). Each point comes as a chain of one and of
three identical ops, and the op's time is half the difference of the two: that cancels the
runtime call, the input copy and the layout reorders ONNX Runtime puts at the edges of a graph
(NCHWc on x86), none of which a node inside a real network pays. Weights are made inside the
graph by ``ConstantOfShape`` and folded into initializers when the session is created, so ONNX
Runtime pre-packs them as it does a real model's. (Feeding weights as graph inputs would keep
the files equally small, but measures 1.7x slower 3x3 convs and 4x slower depthwise convs than
real initializers on x86, because nothing fed at run time is pre-packed.)
"""

from __future__ import annotations

import concurrent.futures
import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from splitpipe.devices.profile import OP_CLASSES, DeviceProfile, profile_from_json, read_profile_file
from splitpipe.errors import SplitpipeError

_LOGGER = logging.getLogger(__name__)

#: progress callback: (what, done, total)
Progress = Callable[[str, int, int], None]

#: chain lengths of the two models of every point
SHORT, LONG = 1, 3
#: chain lengths of the overhead models (a tiny Add)
OVERHEAD_SHORT, OVERHEAD_LONG = 1, 16
MODELS_PACKAGE = "splitpipe.devices"
MODELS_DIR = "microbench_models"


@dataclass(frozen=True)
class BenchPoint:
    """One micro-benchmark: an op of ``kind`` on an NCHW (N=1) or (M, K) input, chained."""

    name: str
    op_class: str
    #: "conv", "matmul", "add" or "maxpool"
    kind: str
    #: conv, add, maxpool: (C, H) for a (1, C, H, H) input; matmul: (M, K) with a K x K weight
    dims: tuple[int, int]
    kernel: int = 1
    groups: int = 1
    #: measured in quick mode too
    quick: bool = False

    @property
    def input_shape(self) -> tuple[int, ...]:
        a, b = self.dims
        return (a, b) if self.kind == "matmul" else (1, a, b, b)

    @property
    def flops(self) -> int:
        """FLOPs of ONE op of the chain, in the planner's convention."""
        a, b = self.dims
        if self.kind == "conv":
            return 2 * a * b * b * (a // self.groups) * self.kernel * self.kernel
        if self.kind == "matmul":
            return 2 * a * b * b
        if self.kind == "maxpool":
            return a * b * b * self.kernel * self.kernel
        return a * b * b

    @property
    def bytes_moved(self) -> int:
        """Bytes one op reads and writes at least (activations, fp32); for the one-op model
        also the bytes of its graph inputs and output (every op here keeps its input's size)."""
        elems = int(np.prod(self.input_shape))
        return 4 * elems * (3 if self.kind == "add" else 2)

    def file(self, length: int) -> str:
        return f"{self.name}_x{length}.onnx"


def _conv(c: int, h: int, k: int, groups: int = 1, quick: bool = False) -> BenchPoint:
    cls = "dwconv" if groups > 1 else "conv"
    name = f"{'dw' if groups > 1 else ''}conv{k}x{k}_c{c}_h{h}"
    return BenchPoint(name, cls, "conv", (c, h), kernel=k, groups=groups, quick=quick)


#: sizes of layers in ResNet-18/50 and MobileNetV2 at 224x224 input
POINTS: tuple[BenchPoint, ...] = (
    _conv(64, 56, 3, quick=True),
    _conv(128, 28, 3),
    _conv(256, 14, 3),
    _conv(32, 28, 3),
    _conv(64, 56, 1, quick=True),  # quick too: its edge work (boundary_us_per_mb) is not lost in noise
    _conv(256, 14, 1),
    _conv(512, 7, 1),
    _conv(32, 112, 3, groups=32, quick=True),
    _conv(144, 56, 3, groups=144),
    _conv(384, 14, 3, groups=384),
    _conv(960, 7, 3, groups=960),
    BenchPoint("matmul_m1_k1024", "matmul", "matmul", (1, 1024)),
    BenchPoint("matmul_m64_k512", "matmul", "matmul", (64, 512), quick=True),
    BenchPoint("matmul_m197_k768", "matmul", "matmul", (197, 768)),
    BenchPoint("add_c256_h56", "elementwise", "add", (256, 56), quick=True),
    BenchPoint("add_c64_h56", "elementwise", "add", (64, 56)),
    BenchPoint("add_c256_h14", "elementwise", "add", (256, 14)),
    BenchPoint("maxpool3x3_c64_h56", "pool", "maxpool", (64, 56), kernel=3, quick=True),
    BenchPoint("maxpool3x3_c256_h14", "pool", "maxpool", (256, 14), kernel=3),
)
#: the tiny model whose chains give the per-call and per-node overheads
OVERHEAD = BenchPoint("overhead_add", "elementwise", "add", (1, 2))


def model_files() -> list[str]:
    """Every .onnx file the micro-benchmarks need (what make_microbench.py writes)."""
    files = [p.file(n) for p in POINTS for n in (SHORT, LONG)]
    return [*files, OVERHEAD.file(OVERHEAD_SHORT), OVERHEAD.file(OVERHEAD_LONG)]


def _model_bytes(file: str) -> bytes:
    path = resources.files(MODELS_PACKAGE) / MODELS_DIR / file
    try:
        return path.read_bytes()
    except OSError:
        raise SplitpipeError(
            f"micro-benchmark model {file} is missing from the installed package; "
            "reinstall splitpipe or run python -m splitpipe.devices.make_microbench"
        ) from None


# -- this machine ------------------------------------------------------------------------------


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def cpu_model() -> str:
    """A human name for this CPU (and board, on Arm boards that say), used as cache key."""
    info = _cpuinfo()
    match = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    name = match.group(1).strip() if match else ""
    try:
        board = Path("/proc/device-tree/model").read_text(errors="replace").strip("\x00 \n")
    except OSError:
        board = ""
    if not name:
        part = re.search(r"^CPU part\s*:\s*(\S+)$", info, re.M)
        name = (
            f"{platform.machine()} CPU part {part.group(1)}"
            if part
            else (platform.processor() or platform.machine())
        )
    return f"{board}: {name}" if board else name


def cpu_ghz() -> tuple[float, str]:
    """Nominal clock and where it came from."""
    try:
        import psutil

        freq = psutil.cpu_freq()
        if freq is not None and freq.max and freq.max > 0:
            return freq.max / 1e3, "psutil cpu_freq max"
    except Exception:  # psutil cannot read cpufreq in some containers
        pass
    match = re.search(r"@\s*([\d.]+)\s*GHz", cpu_model())
    if match:
        return float(match.group(1)), "CPU model name"
    mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)$", _cpuinfo(), re.M)
    if mhz:
        return float(mhz.group(1)) / 1e3, "/proc/cpuinfo cpu MHz (current clock)"
    return 1.0, "unknown (1 GHz assumed)"


# Arm cores with two 128-bit FMA pipes (Cortex-A76 and later, Neoverse N1); older ones have one
_ARM_WIDE = {
    "0xd0b",
    "0xd0c",
    "0xd0d",
    "0xd0e",
    "0xd40",
    "0xd41",
    "0xd42",
    "0xd43",
    "0xd44",
    "0xd46",
    "0xd47",
    "0xd48",
    "0xd49",
    "0xd4b",
    "0xd4e",
    "0xd4f",
}


def fp32_flops_per_cycle() -> tuple[int, str]:
    """Peak fp32 FLOP per cycle per core, from the instruction set (an estimate)."""
    info = _cpuinfo()
    flags_m = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", info, re.M)
    flags = set(flags_m.group(1).split()) if flags_m else set()
    if "avx512f" in flags:
        return 64, "AVX-512: two 16-lane FMA units assumed"
    if "avx2" in flags and "fma" in flags:
        return 32, "AVX2+FMA: two 8-lane FMA units"
    if "avx" in flags:
        return 16, "AVX without FMA"
    part = re.search(r"^CPU part\s*:\s*(\S+)$", info, re.M)
    if part and part.group(1).lower() in _ARM_WIDE:
        return 16, "Arm core with two 128-bit FMA pipes"
    if "asimd" in flags or platform.machine().lower() in ("aarch64", "arm64"):
        return 8, "Arm core with one 128-bit FMA pipe"
    return 8, "unknown instruction set: SSE-class 8 FLOP/cycle assumed"


# -- measurement ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Budget:
    seconds: float
    min_reps: int
    max_reps: int
    warmup: int = 2


QUICK = _Budget(seconds=0.1, min_reps=5, max_reps=300)
FULL = _Budget(seconds=0.3, min_reps=7, max_reps=2000)


def _feed(point: BenchPoint, rng: np.random.Generator) -> dict[str, np.ndarray]:
    x = rng.random(point.input_shape, dtype=np.float32)
    if point.kind == "add":
        return {"x": x, "b": rng.random(point.input_shape, dtype=np.float32)}
    return {"x": x}


def _time_pair(
    short: Any, long: Any, feed: dict[str, np.ndarray], budget: _Budget
) -> tuple[float, float, int]:
    """Median seconds of one call of ``short`` and of ``long``, timed alternately so that drift
    (clock boost, other load) hits both alike."""
    for _ in range(budget.warmup):
        short.infer(feed, check=False)
        long.infer(feed, check=False)
    t_short: list[float] = []
    t_long: list[float] = []
    start = time.perf_counter()
    while len(t_short) < budget.max_reps:
        t0 = time.perf_counter()
        short.infer(feed, check=False)
        t1 = time.perf_counter()
        long.infer(feed, check=False)
        t2 = time.perf_counter()
        t_short.append(t1 - t0)
        t_long.append(t2 - t1)
        if len(t_short) >= budget.min_reps and t2 - start >= budget.seconds:
            break
    return min(t_short), min(t_long), len(t_short)


def copy_bandwidth_gbs(nbytes: int = 64 << 20, threads: int = 1, repeats: int = 5) -> float:
    """Memory bandwidth of a large copy (bytes read + bytes written per second, GB/s),
    split over ``threads`` threads; the best of ``repeats``."""
    n = max(nbytes // 4, threads)
    src = np.ones(n, dtype=np.float32)
    dst = np.empty_like(src)
    chunks = [slice(i * n // threads, (i + 1) * n // threads) for i in range(threads)]
    np.copyto(dst, src)  # first touch: page faults are not bandwidth
    best = float("inf")
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            if threads == 1:
                np.copyto(dst, src)
            else:
                list(pool.map(lambda s: np.copyto(dst[s], src[s]), chunks))
            best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best / 1e9


def _runner(file: str, threads: int, providers: Sequence[str]) -> Any:
    from splitpipe.devices.runtimes.ort import OrtRunner

    runner = OrtRunner(_model_bytes(file), threads=threads, providers=list(providers))
    runner.activate()
    return runner


def measure_overheads(threads: int, providers: Sequence[str], budget: _Budget) -> dict[str, float]:
    """Per-call and per-node fixed costs, microseconds, from chains of 1 and 16 tiny Adds."""
    short = _runner(OVERHEAD.file(OVERHEAD_SHORT), threads, providers)
    long = _runner(OVERHEAD.file(OVERHEAD_LONG), threads, providers)
    try:
        feed = _feed(OVERHEAD, np.random.default_rng(0))
        quick_budget = _Budget(budget.seconds / 2, max(budget.min_reps, 20), budget.max_reps * 5)
        t1, t16, reps = _time_pair(short, long, feed, quick_budget)
    finally:
        short.deactivate()
        long.deactivate()
    node_s = max((t16 - t1) / (OVERHEAD_LONG - OVERHEAD_SHORT), 0.0)
    return {"node_us": node_s * 1e6, "run_us": max(t1 - node_s, 0.0) * 1e6, "reps": reps}


def measure_point(
    point: BenchPoint, threads: int, providers: Sequence[str], budget: _Budget, node_us: float
) -> dict[str, Any]:
    """Time one point; the op's time is half the difference between the chains of 3 and of 1."""
    short = _runner(point.file(SHORT), threads, providers)
    long = _runner(point.file(LONG), threads, providers)
    try:
        t1, t3, reps = _time_pair(short, long, _feed(point, np.random.default_rng(0)), budget)
    finally:
        short.deactivate()
        long.deactivate()
    op_s = (t3 - t1) / (LONG - SHORT) - node_us * 1e-6
    noisy = op_s <= 0.05 * t1
    if noisy:
        # the difference drowned in noise (a busy machine): take the whole single-op call, an
        # overestimate of the op's time, rather than divide by almost nothing
        op_s = t1
    return {
        "name": point.name,
        "op_class": point.op_class,
        "flops": point.flops,
        "x1_ms": t1 * 1e3,
        "x3_ms": t3 * 1e3,
        "op_ms": op_s * 1e3,
        "gflops": point.flops / op_s / 1e9,
        "bytes_per_s": point.bytes_moved / op_s,
        "reps": reps,
        "noisy": noisy,
    }


def _class_figures(points: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, list[list[float]]]]:
    """Per class: FLOPs over time across its points, and the (FLOPs, GFLOP/s) curve."""
    gflops: dict[str, float] = {}
    curves: dict[str, list[list[float]]] = {}
    for cls in OP_CLASSES:
        mine = [p for p in points if p["op_class"] == cls]
        if not mine:
            continue
        gflops[cls] = round(sum(p["flops"] for p in mine) / sum(p["op_ms"] * 1e-3 for p in mine) / 1e9, 4)
        by_flops: dict[int, list[dict[str, Any]]] = {}
        for p in mine:
            by_flops.setdefault(p["flops"], []).append(p)
        curves[cls] = [
            [float(f), round(f * len(ps) / sum(p["op_ms"] * 1e-3 for p in ps) / 1e9, 4)]
            for f, ps in sorted(by_flops.items())
        ]
    return gflops, curves


#: points whose graph inputs and output are smaller than this say nothing about per-byte costs
_MIN_BOUNDARY_BYTES = 64 << 10


def _boundary_figures(points: list[dict[str, Any]], overheads: dict[str, float]) -> dict[str, float]:
    """Per class, what its one-op models cost beyond their op and the fixed call and node
    costs, per MB of their inputs and output: the edge work (input copy, layout reorders,
    output write) that a head or tail pays at its ends and a node inside a model does not.

    The difference is small against a long op's timing noise, so each class uses the half of
    its points with the least op time per boundary byte, and their median."""
    by_name = {p.name: p for p in POINTS}
    fixed_ms = (overheads["run_us"] + overheads["node_us"]) * 1e-3
    mine: dict[str, list[tuple[float, float]]] = {}
    for r in points:
        mb = by_name[r["name"]].bytes_moved / 1e6
        if r["noisy"] or mb * 1e6 < _MIN_BOUNDARY_BYTES:
            continue
        edge_us = max(r["x1_ms"] - r["op_ms"] - fixed_ms, 0.0) * 1e3
        mine.setdefault(r["op_class"], []).append((r["op_ms"] / mb, edge_us / mb))
    out = {}
    for cls, rows in mine.items():
        rows.sort()
        out[cls] = round(float(np.median([rate for _, rate in rows[: (len(rows) + 1) // 2]])), 3)
    return out


def _power_figures(
    meter: Any,
    threads: int,
    providers: Sequence[str],
    idle_s: float,
    load_s: float,
    progress: Progress | None,
) -> dict[str, Any]:
    """Idle power (nothing running) and loaded power (the conv benchmark in a loop)."""
    if progress:
        progress("power: idle", 0, 2)
    time.sleep(min(idle_s, 1.0))  # let the benchmarks' heat and clocks settle a little
    idle = _meter_window(meter, lambda: time.sleep(idle_s))
    if progress:
        progress("power: loaded", 1, 2)
    point = next(p for p in POINTS if p.op_class == "conv" and p.quick)
    runner = _runner(point.file(LONG), threads, providers)
    feed = _feed(point, np.random.default_rng(0))

    def load() -> None:
        end = time.perf_counter() + load_s
        while time.perf_counter() < end:
            runner.infer(feed, check=False)

    try:
        loaded = _meter_window(meter, load)
    finally:
        runner.deactivate()
    if progress:
        progress("power", 2, 2)
    return {"idle": idle.to_json(), "loaded": loaded.to_json()}


def _meter_window(meter: Any, work: Callable[[], None]) -> Any:
    meter.start()
    try:
        work()
    finally:
        sample = meter.stop()
    return sample


def profile_this_machine(
    quick: bool = True,
    threads: int = 1,
    progress: Progress | None = None,
    *,
    providers: Sequence[str] = ("cpu",),
    name: str = "local",
    base: DeviceProfile | None = None,
    meter: Any = None,
    idle_s: float | None = None,
    load_s: float | None = None,
) -> DeviceProfile:
    """Measure this machine with ONNX Runtime and return its profile.

    ``quick`` runs one size per operator class (about a second on a desktop CPU); otherwise
    every size, longer. ``base`` supplies what cannot be measured here (description, memory,
    radio and, without a meter, power) from a built-in profile. ``meter`` (a measured one, from
    :func:`splitpipe.devices.meters.detect_meter`) adds idle and loaded power; without one, or
    with an estimating one, power figures are the base profile's or a generic guess and
    ``measured_power`` is False.
    """
    if not isinstance(threads, int) or threads < 1:
        raise SplitpipeError(f"threads must be a positive integer, got {threads!r}")
    import onnxruntime as ort

    from splitpipe import __version__
    from splitpipe.devices.runtimes.ort import resolve_providers

    resolve_providers(list(providers))  # fail early, with the list of what exists
    started = time.perf_counter()
    budget = QUICK if quick else FULL
    points = [p for p in POINTS if p.quick or not quick]
    total = len(points) + 2
    done = 0

    def step(what: str) -> None:
        if progress:
            progress(what, done, total)

    step("overheads")
    overheads = measure_overheads(threads, providers, budget)
    done += 1
    results = []
    for point in points:
        step(point.name)
        results.append(measure_point(point, threads, providers, budget, overheads["node_us"]))
        done += 1
    step("memory bandwidth")
    bandwidth = copy_bandwidth_gbs(threads=threads, repeats=3 if quick else 7)
    done += 1
    step("done")

    measured_gflops, curves = _class_figures(results)
    per_cycle, isa = fp32_flops_per_cycle()
    ghz, ghz_source = cpu_ghz()
    peak = per_cycle * ghz * threads
    adds = [r for r in results if r["name"].startswith("add_")]
    ew_bytes = max(r["bytes_per_s"] for r in adds) / 1e9 if adds else bandwidth * 0.6
    import psutil

    power: dict[str, Any] = {}
    if meter is not None and getattr(meter, "measured", False):
        power = _power_figures(
            meter,
            threads,
            providers,
            idle_s or (1.0 if quick else 3.0),
            load_s or (1.0 if quick else 3.0),
            progress,
        )
    idle_w, active_w, power_source, measured_power = _power_model(base, power, os.cpu_count() or 1)
    model = cpu_model()
    sources = dict(base.sources) if base else {}
    sources.update(
        {
            "cpu": f"this machine: {model}; clock from {ghz_source}",
            "peak_gflops": f"estimate: {per_cycle} FLOP/cycle ({isa}) x {ghz:g} GHz x {threads} thread(s)",
            "measured_gflops": (
                f"measured with ONNX Runtime {ort.__version__} ({', '.join(providers)}), {threads} thread(s): "
                "chains of 3 vs 1 identical ops, fastest of alternating runs"
            ),
            "mem_bandwidth_gbs": f"measured: numpy copy of 64 MiB over {threads} thread(s), read + write bytes, best run",
            "memory_efficiency": "measured: best elementwise Add traffic / copy bandwidth",
            "compute_efficiency": "measured conv GFLOP/s / estimated fp32 peak",
            "node_overhead_us": "measured: chain of 16 vs 1 tiny Adds",
            "run_overhead_us": "measured: one call of a one-node model, minus one node",
            "boundary_us_per_mb": (
                "measured: one-op model minus its op and the fixed costs, per MB of its inputs and "
                "output, median per class"
            ),
            "idle_w": power_source,
            "active_w": power_source,
            "memory_bytes": "psutil: total RAM of this machine",
        }
    )
    conv_rate = measured_gflops.get("conv", peak * 0.3)
    data: dict[str, Any] = {
        "name": name,
        "description": (
            f"{base.description if base else model}; measured here with ONNX Runtime {ort.__version__}, "
            f"{threads} thread(s){' (quick)' if quick else ''}"
        ),
        "role": base.role if base else "device",
        "cpu_cores": os.cpu_count() or 1,
        "cpu_ghz": round(ghz, 3),
        "peak_gflops": {"fp32": round(peak, 2)},
        "mem_bandwidth_gbs": round(bandwidth, 3),
        "memory_bytes": int(psutil.virtual_memory().total),
        "idle_w": idle_w,
        "active_w": active_w,
        "radio_w": base.radio_w if base else 0.5,
        "runtimes": list(base.runtimes) if base else ["ort"],
        "compute_efficiency": round(min(max(conv_rate / peak, 0.01), 1.0), 4),
        "memory_efficiency": round(min(max(ew_bytes / bandwidth, 0.01), 1.0), 4),
        "node_overhead_us": round(overheads["node_us"], 3),
        "run_overhead_us": round(overheads["run_us"], 3),
        "measured_gflops": measured_gflops,
        "measured_points": curves,
        "boundary_us_per_mb": _boundary_figures(results, overheads),
        "measured_power": measured_power,
        "power_rails": list(base.power_rails) if base else [],
        "power_calibration": base.power_calibration if base else 1.0,
        "sources": sources,
        "measurement": {
            "tool": "splitpipe profile",
            "splitpipe": __version__,
            "onnxruntime": ort.__version__,
            "providers": list(providers),
            "threads": threads,
            "quick": quick,
            "cpu_model": model,
            "machine": platform.machine(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "copy_bandwidth_gbs": bandwidth,
            "overheads": overheads,
            "points": results,
            "power": power or {"meter": "none: power figures are not measured"},
            "elapsed_s": round(time.perf_counter() - started, 3),
        },
    }
    if not base:
        sources["radio_w"] = "estimate: typical Wi-Fi transmit power over idle"
    return profile_from_json(data, f"measured profile {name}")


def _power_model(
    base: DeviceProfile | None, power: dict[str, Any], cores: int
) -> tuple[float, float, str, bool]:
    """(idle W, active W, source, measured) from meter readings, else the base profile, else a guess."""
    idle = power.get("idle", {})
    loaded = power.get("loaded", {})
    if idle.get("complete") and loaded.get("complete") and idle.get("measured") and loaded.get("measured"):
        idle_w = round(float(idle["mean_w"]), 3)
        active_w = round(max(float(loaded["mean_w"]), idle_w), 3)
        return (
            idle_w,
            active_w,
            f"measured by {loaded['source']} (idle, then the conv benchmark in a loop)",
            True,
        )
    if base is not None:
        return base.idle_w, base.active_w, f"public figures of profile {base.name} (no meter here)", False
    from splitpipe.devices.meters.estimated import generic_power_model

    idle_w, active_w, what = generic_power_model(cores)
    return idle_w, active_w, f"estimate: {what}", False


# -- the cached profile of this machine --------------------------------------------------------


#: bumped when profiles gain a measured field, so that older cached profiles are measured again
_CACHE_FORMAT = 2


def local_profile_path(threads: int = 1, providers: Sequence[str] = ("cpu",)) -> Path:
    """Where ``local_profile`` caches this machine's profile: keyed by CPU model, thread count,
    execution providers, ONNX Runtime version (a new runtime may be faster) and cache format."""
    import onnxruntime as ort

    from splitpipe._env import cache_dir

    key = f"{cpu_model()}|{threads}|{','.join(providers)}|{ort.__version__}|{_CACHE_FORMAT}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    folder = cache_dir() / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"local-t{threads}-{digest}.json"


def local_profile(
    refresh: bool = False, *, threads: int = 1, quick: bool = True, progress: Progress | None = None
) -> DeviceProfile:
    """This machine's measured profile, from the cache or measured now (quick: about a second).

    A cached full measurement also satisfies a quick request; ``refresh`` measures again.
    """
    path = local_profile_path(threads)
    if not refresh and path.is_file():
        try:
            cached = read_profile_file(path)
            if quick or not cached.measurement.get("quick", True):
                return cached
        except SplitpipeError as exc:
            _LOGGER.warning("ignoring a broken cached profile (%s); measuring again", exc)
    profile = profile_this_machine(quick=quick, threads=threads, progress=progress)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(profile.to_json(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # readers never see half a file
    return profile
