"""``splitpipe export``: write one split as head.onnx, tail.onnx and manifest.json, verified."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from splitpipe.commands.plan import (
    add_cost_arguments,
    add_model_arguments,
    given_request_flags,
    request_from_args,
)


def _split_id(text: str) -> int | str:
    if text in ("local", "offload"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a split id; accepted: a number from the plan, local, offload"
        ) from None


def register(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="write the two halves of one split, verified against the model",
        description="Export split ID of a model as head.onnx, tail.onnx and manifest.json, and "
        "check on random inputs that tail(head(x)) reproduces the whole model.",
    )
    add_model_arguments(p)
    add_cost_arguments(p)
    # no --codec: the plan's codec for this split (with --plan), else raw
    p.set_defaults(codec=None)
    p.add_argument(
        "--split",
        required=True,
        type=_split_id,
        metavar="ID",
        help="candidate id from `splitpipe plan`, or a baseline: local (the whole model as the head, no tail) or offload (a pass-through head, the whole model as the tail)",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--plan", metavar="PLAN.json", help="take the model, options and predictions from this plan"
    )
    p.add_argument("--name", help="model name the server serves the tail under (default MODEL-sID)")
    p.add_argument(
        "--tolerance", type=float, default=1e-4, help="largest relative difference accepted (default 1e-4)"
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="store static codec scales, from the cut tensors of a few inputs, in the manifest",
    )
    p.add_argument(
        "--fold-qdq",
        action="store_true",
        help="bake a symmetric int8 codec into the graphs (QuantizeLinear at the end of the head, "
        "DequantizeLinear at the start of the tail) for TensorRT and stock Triton",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from splitpipe.errors import SplitpipeError, check_output_dir, check_writable
    from splitpipe.partition.export import export_split
    from splitpipe.partition.plan import read_plan

    check_output_dir(args.out, "--out", "the export")
    check_writable(args.out, "--out")
    if not (args.tolerance > 0 and args.tolerance < float("inf")):
        raise SplitpipeError(
            f"--tolerance must be a positive number (a relative difference), got {args.tolerance}"
        )
    if args.codec == "auto":
        raise SplitpipeError(
            "--codec auto chooses per split when planning; export takes the plan's choice for the "
            "split (--plan PLAN.json, from `splitpipe plan --codec auto`) or a codec name such as int8+zstd"
        )
    plan = None
    if args.plan:
        plan = read_plan(args.plan)
        req = plan.request
        if args.model and args.model != req.model and str(Path(args.model).resolve()) != req.model:
            raise SplitpipeError(f"--plan is for model {req.model!r}, not {args.model!r}")
        stray = given_request_flags(args, allow=("model", "codec"))
        if stray:
            raise SplitpipeError(
                f"--plan takes the model, link, device and server of {args.plan}, so {', '.join(stray)} would be "
                "ignored; plan again with them, or export without --plan"
            )
    else:
        req = request_from_args(args)
    result = export_split(
        req,
        args.split,
        args.out,
        plan=plan,
        tolerance=args.tolerance,
        name=args.name,
        codec=args.codec,
        calibrate=args.calibrate,
        fold_qdq=args.fold_qdq,
    )
    v = result.manifest["verification"]
    print(f"exported split {args.split} ({result.manifest['split']['label']}) of {req.model} to {result.out}")
    files = ", ".join(f"{f['path']} {f['bytes']:,} B" for f in result.manifest["files"].values())
    cut = ", ".join(str(t["shape"]) for t in result.manifest["cut"]) or "none (runs on the device)"
    print(f"  {files}; cut {cut}")
    codec = result.manifest["codec"]
    folded = f", folded {codec['folded']} into the graphs" if codec.get("folded") else ""
    static = ", static scales" if codec.get("calibration") else ""
    print(f"  codec {codec['name']}{folded}{static}")
    if "quantized_vs_model_max_rel" in v:
        print(
            f"  folded graphs send the same int8 codes as the codec ({v['folded_codes_differing']} differ); "
            f"quantization changes the output by {v['quantized_vs_model_max_rel']:.3g} (relative)"
        )
    print(
        f"  verified on {v['samples']} random inputs: max abs diff {v['max_abs']:.3g}, max relative diff "
        f"{v['max_rel']:.3g} (tolerance {v['tolerance']:g})"
    )
    return 0
