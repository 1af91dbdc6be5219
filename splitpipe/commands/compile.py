"""``splitpipe compile EXPORT_DIR --part head|tail --target ort|ort-int8|tensorrt``: one part of
an export built for the machine that runs it, measured against the float part (docs/compile.md)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

PARTS = ("head", "tail")
TARGETS = ("ort", "ort-int8", "tensorrt")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compile",
        help="build an export's head or tail for ONNX Runtime (optimized or int8) or TensorRT",
        description=(
            "Compile one part of an export directory: ort (offline-optimized ONNX Runtime model), "
            "ort-int8 (static int8 quantization, calibrated on frames), or tensorrt (a serialized "
            "engine, built on this machine's GPU). The compiled part is measured against the float "
            "part on held-out frames (error, latency), written into the export directory and "
            "recorded in manifest.json; the agent (head) and the server (tail) then load it when "
            "their runtime is the one it was built for. See docs/compile.md."
        ),
    )
    p.add_argument("export_dir", type=Path, metavar="EXPORT_DIR", help="written by splitpipe export")
    p.add_argument("--part", required=True, help="head (runs on the device) or tail (runs on the server)")
    p.add_argument("--target", required=True, help="ort, ort-int8 or tensorrt")
    p.add_argument(
        "--calibration",
        nargs="+",
        default=["synthetic"],
        metavar="SRC",
        help="frames for calibration and the error figures: synthetic (default) or images DIR",
    )
    p.add_argument(
        "--frames", type=int, default=32, metavar="N", help="calibration frames (ort-int8; default 32)"
    )
    p.add_argument(
        "--eval-frames",
        type=int,
        default=16,
        metavar="M",
        help="held-out frames (after the calibration frames) for the error figures (default 16)",
    )
    p.add_argument(
        "--max-error",
        type=float,
        default=0.05,
        metavar="E",
        help="largest relative error accepted at the model outputs; above it nothing is written (default 0.05)",
    )
    p.add_argument("--force", action="store_true", help="write the compiled part even above --max-error")
    p.add_argument("--fp16", action="store_true", help="tensorrt: allow fp16 kernels")
    p.add_argument(
        "--level",
        default="basic",
        help="ort: offline optimization level, basic (any provider) or extended (CPU provider; default basic)",
    )
    p.add_argument(
        "--activations",
        default="int8",
        help="ort-int8: activation type, int8 (default) or uint8 (faster on x86 without VNNI, may saturate there)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="K",
        help="threads for the measurements; 0: ONNX Runtime chooses",
    )
    p.add_argument("--rounds", type=int, default=5, help="alternating latency rounds (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of synthetic frames (default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=run)


def _progress(message: str) -> None:
    sys.stderr.write(f"compile: {message}\n")
    sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    from splitpipe.edge.options import parse_source
    from splitpipe.errors import SplitpipeError, check_writable
    from splitpipe.partition.compile import CompileOptions, compile_export

    if not 0 <= args.threads <= (os.cpu_count() or 1):
        raise SplitpipeError(
            f"--threads must be between 0 (ONNX Runtime chooses) and {os.cpu_count() or 1} (the CPUs of "
            f"this machine), got {args.threads}"
        )
    if args.export_dir.is_dir():  # the compiled part and the manifest are written into it
        check_writable(args.export_dir, "EXPORT_DIR", inside=True)
    options = CompileOptions(
        part=args.part,
        target=args.target,
        calibration=parse_source(args.calibration, seed=args.seed),
        frames=args.frames,
        eval_frames=args.eval_frames,
        max_error=args.max_error,
        force=args.force,
        fp16=args.fp16,
        level=args.level,
        activations=args.activations,
        threads=args.threads or None,
        rounds=args.rounds,
    )
    result = compile_export(args.export_dir, options, None if args.quiet else _progress)
    e = result.entry
    err, lat = e["error"], e["latency"]
    print(
        f"compiled the {result.part} of {result.directory} for {e['target']} ({e['precision']}): "
        f"{e['path']} {e['bytes']:,} B, recorded in manifest.json"
    )
    part = err["part"]
    print(
        f"  error vs the float {result.part} on {err['frames']} held-out frames (measured): "
        f"{result.part} outputs max abs {part['max_abs']:.3g}, max relative {part['max_rel']:.3g}"
    )
    model = err.get("model")
    if model is not None and model != part:
        print(f"  at the model outputs (through {model.get('through', 'the float tail')}): "
              f"max abs {model['max_abs']:.3g}, max relative {model['max_rel']:.3g}")  # fmt: skip
    top1 = (model or part).get("top1_agreement")
    if top1:
        print("  top-1 agreement with the float model: " + ", ".join(f"{k} {v:.1%}" for k, v in top1.items()))
    print(
        f"  latency on this machine (measured, {lat['rounds']} alternating rounds, {lat['threads'] or 'auto'} "
        f"thread(s)): float {lat['float_ms']:.3f} ms, compiled {lat['compiled_ms']:.3f} ms, "
        f"{lat['speedup']:.2f}x; load {lat['load_ms']['float']:.1f} ms -> {lat['load_ms']['compiled']:.1f} ms"
    )
    if not err["within_budget"]:
        print(
            f"  WARNING: the error is above --max-error {err['budget']:g}; written anyway because of --force"
        )
    return 0
