"""Compile one part of an export for the machine that runs it (docs/compile.md).

Targets:

- ``ort``: the part optimized offline by ONNX Runtime (``SessionOptions.optimized_model_filepath``)
  at the ``basic`` level (portable across execution providers and CPUs) or ``extended`` (more
  fusions, into contrib ops that ONNX Runtime's CPU provider runs on any CPU).
- ``ort-int8``: static int8 quantization with ONNX Runtime's own tooling (``quant_pre_process``,
  then ``quantize_static``: QDQ format, int8 weights per channel, int8 activations unless
  uint8 is asked for, MinMax calibration) on frames of the agent's sources; the tail is calibrated on the float head's
  outputs on those frames.
- ``tensorrt``: a serialized engine built with the TensorRT Python API on this machine's GPU
  (:func:`splitpipe.devices.runtimes.trt.engine_from_onnx`); TensorRT is imported only here.

Every compiled part is measured against the float part on held-out frames (error at the part's
outputs and, through the float other part, at the model's outputs, with top-1 agreement for
classifier-like outputs) and timed against it in alternating rounds on this machine. The file is
written beside the export's files under a temporary name and renamed, and manifest.json is
replaced atomically with its ``compiled.<part>`` entry, so an interrupted compile leaves the
export as it was.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from splitpipe._files import write_whole
from splitpipe.devices.runtimes.compiled import PARTS, TARGET_RUNTIMES, compiled_file, sha256_file
from splitpipe.edge.options import SourceSpec
from splitpipe.errors import SplitpipeError, UnavailableError, choices

_LOGGER = logging.getLogger(__name__)

TARGETS = tuple(TARGET_RUNTIMES)
LEVELS = ("basic", "extended")
ACTIVATIONS = ("int8", "uint8")
CALIBRATION_SOURCES = ("synthetic", "images")
#: compiled file name per target ({part} is head or tail)
FILE_NAMES = {"ort": "{part}.ort.onnx", "ort-int8": "{part}.int8.onnx", "tensorrt": "{part}.engine"}
#: a round of the latency measurement runs the part for about this long (at least 3 runs)
ROUND_S = 0.1

Feed = dict[str, np.ndarray]
Progress = Callable[[str], None]


@dataclass(frozen=True)
class CompileOptions:
    """What ``splitpipe compile`` builds and how it measures it.

    - ``part``: ``head`` (runs on the device) or ``tail`` (runs on the server).
    - ``target``: ``ort``, ``ort-int8`` or ``tensorrt``.
    - ``calibration``: where frames come from: ``synthetic`` (random frames of the inputs'
      shape, as the agent's synthetic source) or ``images DIR`` (decoded as the agent does).
    - ``frames``: calibration frames (``ort-int8``); ``eval_frames``: held-out frames, after
      them in the source, on which every target's error is measured.
    - ``max_error``: the largest relative error (at the model outputs, else the part's) that is
      accepted; above it nothing is written unless ``force``.
    - ``fp16``: TensorRT only: allow fp16 kernels.
    - ``level``: ``ort`` only: ``basic`` or ``extended`` offline graph optimization.
    - ``activations``: ``ort-int8`` only: ``int8`` (S8S8, ONNX Runtime's recommended default)
      or ``uint8`` (U8S8: faster on x86 CPUs without VNNI, but their u8 x s8 kernels can
      saturate, which the measured error shows; docs/compile.md).
    - ``threads``: ONNX Runtime intra-op threads for the measurements (None: it chooses).
    - ``rounds``: alternating latency rounds (float part, compiled part).
    """

    part: str = "head"
    target: str = "ort"
    calibration: SourceSpec = field(default_factory=SourceSpec)
    frames: int = 32
    eval_frames: int = 16
    max_error: float = 0.05
    force: bool = False
    fp16: bool = False
    level: str = "basic"
    activations: str = "int8"
    threads: int | None = 1
    rounds: int = 5

    def __post_init__(self) -> None:
        if self.part not in PARTS:
            raise choices("part", self.part, PARTS)
        if self.target not in TARGET_RUNTIMES:
            raise choices("target", self.target, TARGETS)
        if self.calibration.kind not in CALIBRATION_SOURCES:
            raise SplitpipeError(
                f"--calibration {self.calibration.describe()} is not supported; accepted: synthetic, images DIR"
            )
        if self.frames < 1 or self.eval_frames < 1:
            raise SplitpipeError(
                f"--frames and --eval-frames must be at least 1, got {self.frames} and {self.eval_frames}"
            )
        if not (self.max_error >= 0 and np.isfinite(self.max_error)):
            raise SplitpipeError(f"--max-error must be a number >= 0, got {self.max_error}")
        if self.fp16 and self.target != "tensorrt":
            raise SplitpipeError(f"--fp16 applies to --target tensorrt, not {self.target}")
        if self.level not in LEVELS:
            raise choices("optimization level", self.level, LEVELS)
        if self.level != "basic" and self.target != "ort":
            raise SplitpipeError(f"--level applies to --target ort, not {self.target}")
        if self.activations not in ACTIVATIONS:
            raise choices("activation type", self.activations, ACTIVATIONS)
        if self.activations != "int8" and self.target != "ort-int8":
            raise SplitpipeError(f"--activations applies to --target ort-int8, not {self.target}")
        if self.threads is not None and self.threads < 1:
            raise SplitpipeError(f"--threads must be at least 1 (or unset), got {self.threads}")
        if self.rounds < 1:
            raise SplitpipeError(f"--rounds must be at least 1, got {self.rounds}")


@dataclass(frozen=True)
class CompileResult:
    directory: Path
    part: str
    path: Path
    entry: dict[str, Any]  # the manifest's compiled.<part>

    @property
    def within_budget(self) -> bool:
        return bool(self.entry["error"]["within_budget"])


def compile_export(
    directory: str | Path, options: CompileOptions, progress: Progress | None = None
) -> CompileResult:
    """Compile ``options.part`` of the export in ``directory`` for ``options.target``, measure
    it, and record it in the manifest. SplitpipeError (nothing written) on bad input, an
    unavailable toolchain, or an error above ``options.max_error`` without ``options.force``."""
    from splitpipe.edge.manifest import export_from_manifest, read_manifest

    say = progress or (lambda _msg: None)
    directory = Path(directory)
    manifest = read_manifest(directory)
    if isinstance(manifest, dict) and isinstance(manifest.get("compiled"), dict):
        # the compiled part being replaced need not verify (compiling again is how to mend
        # it); the other one must
        manifest["compiled"].pop(options.part, None)
    export = export_from_manifest(directory, manifest)  # format, tensors, head.onnx's sha256
    files = manifest["files"]
    if options.part == "tail" and export.local:
        raise SplitpipeError(f"export {directory} is local (the whole model is head.onnx): it has no tail")
    source = _checked_part(directory, manifest, options.part)
    compiled_file(directory, manifest, "tail")  # an existing compiled tail must verify too
    if options.target == "tensorrt":
        from splitpipe.devices.runtimes.trt import unavailable_reason

        reason = unavailable_reason()
        if reason:
            raise UnavailableError(f"TensorRT unavailable: {reason}")

    calibrating = options.target == "ort-int8"
    frames = _frames(export, options, options.frames if calibrating else 0, say)
    calibration, held_out = frames[: len(frames) - options.eval_frames], frames[-options.eval_frames :]
    head_path = directory / files["head"]["path"]
    tail_path = directory / files["tail"]["path"] if not export.local else None
    if options.part == "tail":
        say(f"running the float head on {len(frames)} frames for the tail's inputs")
        calibration = _run_all(head_path, calibration, options.threads)
        held_out = _run_all(head_path, held_out, options.threads)

    name = FILE_NAMES[options.target].format(part=options.part)
    final = directory / name
    tmp = directory / f".{name}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        build = _build(source, tmp, options, calibration, say)
        say(f"measuring {name} against {source.name} on {len(held_out)} held-out frames")
        error = _measure_error(source, tmp, options, held_out, export.local, head_path, tail_path)
        latency = _measure_latency(source, tmp, name, options, held_out[0])
        figure = error["model"]["max_rel"] if error.get("model") else error["part"]["max_rel"]
        within = bool(figure <= options.max_error)
        error.update({"budget": options.max_error, "within_budget": within})
        if not within and not options.force:
            where = "model outputs" if error.get("model") else f"{options.part}'s outputs"
            raise SplitpipeError(
                f"{options.target} {options.part} differs from the float {options.part} by {figure:.3g} "
                f"(relative, at the {where}, measured on {len(held_out)} held-out frames), above "
                f"--max-error {options.max_error:g}; nothing was written (--force writes it anyway)"
            )
        entry = {
            "path": name,
            "sha256": sha256_file(tmp),
            "bytes": tmp.stat().st_size,
            "target": options.target,
            "runtime": TARGET_RUNTIMES[options.target],
            "precision": _precision(options),
            "from": {"path": files[options.part]["path"], "sha256": files[options.part]["sha256"]},
            "build": build,
            "calibration": {
                "source": options.calibration.describe(),
                "frames": len(calibration),
                "method": "MinMax",
            }
            if calibrating
            else None,
            "error": error,
            "latency": latency,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    _write_manifest(directory, options.part, entry)
    return CompileResult(directory, options.part, final, entry)


def _checked_part(directory: Path, manifest: dict[str, Any], part: str) -> Path:
    entry = (manifest.get("files") or {}).get(part)
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        raise SplitpipeError(f"export {directory}: manifest field files.{part} must give its path and sha256")
    path = directory / entry["path"]
    if not path.is_file():
        raise SplitpipeError(f"export {directory}: {entry['path']} is missing")
    if sha256_file(path) != str(entry.get("sha256", "")).lower():
        raise SplitpipeError(
            f"export {directory}: {entry['path']} does not match the sha256 of the manifest; export again"
        )
    return path


def _precision(options: CompileOptions) -> str:
    if options.target == "ort-int8":
        return "int8"
    if options.target == "tensorrt" and options.fp16:
        return "fp16"
    return "fp32"


# -- frames -------------------------------------------------------------------------------------


def _frames(export: Any, options: CompileOptions, calibration: int, say: Progress) -> list[Feed]:
    """``calibration`` frames then ``options.eval_frames`` held-out ones, from the source."""
    from splitpipe.edge.sources import ImageSource, SyntheticSource

    wanted = calibration + options.eval_frames
    spec = options.calibration
    if spec.kind == "synthetic":
        # one seed per frame: the agent's synthetic source cycles a small pool of distinct frames
        return [SyntheticSource(export.inputs, seed=spec.seed + i).frame(0) for i in range(wanted)]
    say(f"reading {wanted} images from {spec.target}")
    frames: list[Feed] = []
    with ImageSource(Path(str(spec.target)), export.inputs, export.preprocess) as images:
        while len(frames) < wanted:
            feed = images.read()
            if feed is None:
                break
            frames.append({k: v.copy() for k, v in feed.items()})
    if len(frames) < wanted:
        need = (
            f"--frames {calibration} + --eval-frames {options.eval_frames}"
            if calibration
            else (f"--eval-frames {options.eval_frames}")
        )
        raise SplitpipeError(
            f"{spec.target} has {len(frames)} images; {need} need {wanted} (lower them, or add images)"
        )
    return frames


def _runner(model: Path | bytes, threads: int | None, runtime: str = "ort") -> Any:
    from splitpipe.devices.runtimes import create_runner

    options: dict[str, Any] = {"threads": threads, "log_severity": 3} if runtime == "ort" else {}
    return create_runner(runtime, model, **options)


def _run_all(model: Path, feeds: list[Feed], threads: int | None) -> list[Feed]:
    with _runner(model, threads) as runner:
        return [runner.infer(feed) for feed in feeds]


# -- build --------------------------------------------------------------------------------------


def _build(
    source: Path, out: Path, options: CompileOptions, calibration: list[Feed], say: Progress
) -> dict[str, Any]:
    if options.target == "ort":
        return _build_ort(source, out, options.level)
    if options.target == "ort-int8":
        return _build_int8(source, out, calibration, options.activations, say)
    return _build_tensorrt(source, out, options, say)


def _ort_version() -> str:
    import onnxruntime as ort

    return str(ort.__version__)


def _build_ort(source: Path, out: Path, level: str) -> dict[str, Any]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    }[level]
    so.optimized_model_filepath = str(out)
    so.log_severity_level = 3
    try:
        ort.InferenceSession(str(source), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's own exception types
        raise SplitpipeError(f"ONNX Runtime cannot optimize {source.name}: {_first_line(exc)}") from None
    portable = (
        "any execution provider and CPU"
        if level == "basic"
        else "ONNX Runtime's CPU execution provider (contrib ops), any CPU"
    )
    return {"onnxruntime": _ort_version(), "level": level, "runs_on": portable}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: list[Feed]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> Feed | None:
        return next(self._feeds, None)


def _build_int8(
    source: Path, out: Path, calibration: list[Feed], activations: str, say: Progress
) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    say(f"calibrating {source.name} on {len(calibration)} frames (static int8, QDQ)")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="splitpipe-compile-") as work:
        pre = Path(work) / "pre.onnx"
        quantized = Path(work) / "int8.onnx"
        # ORT's quantization tools log advice through the root logger; keep it out of the CLI
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        # and quant_pre_process's own session logs graph clean-ups as warnings
        ort.set_default_logger_severity(3)
        try:
            # the exports carry static shapes (but a free batch): ONNX shape inference suffices
            quant_pre_process(str(source), str(pre), skip_symbolic_shape=True)
            quantize_static(
                str(pre),
                str(quantized),
                _Reader(calibration),  # duck-typed CalibrationDataReader
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8 if activations == "int8" else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
        except SplitpipeError:
            raise
        except Exception as exc:
            raise SplitpipeError(
                f"ONNX Runtime cannot quantize {source.name}: {type(exc).__name__}: {_first_line(exc)}"
            ) from None
        finally:
            root.setLevel(level)
        model = onnx.load(str(quantized))
        ops = [n.op_type for n in model.graph.node]
        weights = ops.count("DequantizeLinear") - ops.count("QuantizeLinear")
        if "QuantizeLinear" not in ops:
            raise SplitpipeError(
                f"{source.name} has nothing that ONNX Runtime quantizes (no Conv, MatMul, Gemm, ...); "
                "use --target ort"
            )
        shutil.copyfile(quantized, out)
    say(f"quantized in {time.perf_counter() - start:.1f} s")
    return {
        "onnxruntime": _ort_version(),
        "tool": "onnxruntime.quantization.quantize_static after quant_pre_process",
        "format": "QDQ",
        "weights": "int8, per channel, symmetric",
        "activations": f"{activations}, per tensor, asymmetric",
        "quantized_activations": ops.count("QuantizeLinear"),
        "weight_dequantizers": max(weights, 0),
    }


def _build_tensorrt(source: Path, out: Path, options: CompileOptions, say: Progress) -> dict[str, Any]:
    """Not exercised here: this project's machines have no GPU or TensorRT (docs/compile.md)."""
    import importlib

    from splitpipe.devices.runtimes.trt import engine_from_onnx

    trt = importlib.import_module("tensorrt")
    with _runner(source, options.threads) as runner:
        # free dimensions (the batch) are fixed at 1: one optimization profile, min = opt = max
        shapes = {
            s.name: tuple(1 if d is None else int(d) for d in s.shape)
            for s in runner.inputs
            if None in s.shape
        }
    say(f"building a TensorRT engine from {source.name}{' (fp16 allowed)' if options.fp16 else ''}")
    out.write_bytes(engine_from_onnx(source, fp16=options.fp16, shapes=shapes or None))
    return {
        "tensorrt": str(getattr(trt, "__version__", "?")),
        "fp16": options.fp16,
        "fixed_shapes": {k: list(v) for k, v in shapes.items()},
        "note": "an engine runs only on the GPU model and TensorRT version that built it",
    }


# -- measurement --------------------------------------------------------------------------------


def _compare(want: list[Feed], got: list[Feed]) -> dict[str, Any]:
    from splitpipe.partition.export import compare

    max_abs = max_rel = 0.0
    for w, g in zip(want, got, strict=True):
        a, r = compare(w, g)
        max_abs, max_rel = max(max_abs, a), max(max_rel, r)
    out: dict[str, Any] = {"max_abs": max_abs, "max_rel": max_rel}
    top1 = {}
    for name, first in want[0].items():
        # classifier-like: one row of scores (batch 1, several classes)
        if first.ndim == 2 and first.shape[0] == 1 and first.shape[1] >= 2 and first.dtype.kind == "f":
            same = [int(np.argmax(w[name]) == np.argmax(g[name])) for w, g in zip(want, got, strict=True)]
            top1[name] = sum(same) / len(same)
    if top1:
        out["top1_agreement"] = top1
    return out


def _measure_error(
    source: Path,
    compiled: Path,
    options: CompileOptions,
    feeds: list[Feed],
    local: bool,
    head: Path,
    tail: Path | None,
) -> dict[str, Any]:
    """The compiled part against the float part on ``feeds`` (held out from the calibration)."""
    runtime = TARGET_RUNTIMES[options.target]
    want = _run_all(source, feeds, options.threads)
    with _runner(compiled, options.threads, runtime) as runner:
        got = [runner.infer(feed) for feed in feeds]
    error: dict[str, Any] = {
        "measured": True,
        "frames": len(feeds),
        "held_out": True,
        "source": options.calibration.describe(),
        "reference": f"the float {source.name} in ONNX Runtime",
        "part": _compare(want, got),
        "model": None,
    }
    if options.part == "tail" or local:
        error["model"] = error["part"]  # the part's outputs are the model's
    elif tail is not None:
        # what the head's error does at the model outputs, through the float tail (codec aside)
        error["model"] = _compare(_run_all(tail, want, options.threads), _run_all(tail, got, options.threads))
        error["model"]["through"] = f"the float {tail.name}"
    return error


def _time_runs(runner: Any, feed: Feed, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner.infer(feed, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _measure_latency(
    source: Path, compiled: Path, name: str, options: CompileOptions, feed: Feed
) -> dict[str, Any]:
    """Float and compiled part timed in alternating rounds (the order flips each round), one
    session each; plus the time to load each (session creation)."""
    runtime = TARGET_RUNTIMES[options.target]
    models = {"float": (source, "ort"), "compiled": (compiled, runtime)}
    runners = {k: _runner(p, options.threads, r) for k, (p, r) in models.items()}
    loads: dict[str, list[float]] = {k: [] for k in models}
    runs_ms: dict[str, list[float]] = {k: [] for k in models}
    try:
        for key, runner in runners.items():
            start = time.perf_counter()
            runner.activate()
            loads[key].append((time.perf_counter() - start) * 1e3)
            runner.infer(feed)  # warm-up (and the feed's check)
        warm = max(_time_runs(r, feed, 1) for r in runners.values())
        runs = max(3, min(200, int(ROUND_S * 1e3 / max(warm, 1e-3))))
        ratios = []
        for i in range(options.rounds):
            order = list(runners) if i % 2 == 0 else list(reversed(runners))
            now = {key: _time_runs(runners[key], feed, runs) for key in order}
            for key, ms in now.items():
                runs_ms[key].append(ms)
            ratios.append(now["float"] / now["compiled"] if now["compiled"] > 0 else float("inf"))
            if i < 2:  # a few extra loads, alternating too
                for key in order:
                    again = _runner(models[key][0], options.threads, models[key][1])
                    start = time.perf_counter()
                    again.activate()
                    loads[key].append((time.perf_counter() - start) * 1e3)
                    again.deactivate()
    finally:
        for runner in runners.values():
            runner.deactivate()
    return {
        "measured": True,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
        "float": f"{source.name} in ONNX Runtime {_ort_version()}, CPU",
        "compiled": f"{name} in "
        + (f"ONNX Runtime {_ort_version()}, CPU" if runtime == "ort" else "TensorRT"),
        "threads": options.threads,
        "rounds": options.rounds,
        "runs_per_round": runs,
        "float_ms": statistics.median(runs_ms["float"]),
        "compiled_ms": statistics.median(runs_ms["compiled"]),
        "speedup": statistics.median(ratios),
        "speedup_range": [min(ratios), max(ratios)],
        "load_ms": {k: statistics.median(v) for k, v in loads.items()},
        "note": "medians of per-round medians; speedup = float / compiled, per round, median over rounds",
    }


# -- manifest -----------------------------------------------------------------------------------


def _write_manifest(directory: Path, part: str, entry: dict[str, Any]) -> None:
    """Record ``entry`` as ``compiled.<part>`` (atomically), and remove the file it replaces."""
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    compiled = manifest.get("compiled") or {}
    previous = compiled.get(part)
    compiled[part] = entry
    manifest["compiled"] = compiled
    write_whole(path, json.dumps(manifest, indent=2) + "\n")
    if isinstance(previous, dict) and previous.get("path") not in (None, entry["path"]):
        old = (directory / str(previous["path"])).resolve()
        if old.is_relative_to(directory.resolve()) and old.name not in ("head.onnx", "tail.onnx"):
            old.unlink(missing_ok=True)
