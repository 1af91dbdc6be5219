"""``splitpipe triton-repo EXPORT_DIR [EXPORT_DIR ...] --repo REPO``: tails for a stock Triton server."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "triton-repo",
        help="write exported tails as a Triton model repository (ONNX Runtime backend)",
        description=(
            "Write each export's tail into a Triton model repository: NAME/config.pbtxt and "
            "NAME/1/model.onnx. The cut must travel as plain tensors: export with --codec raw, or "
            "with --codec int8/sym --fold-qdq. See docs/export.md."
        ),
    )
    parser.add_argument(
        "export_dirs", nargs="+", type=Path, metavar="EXPORT_DIR", help="written by splitpipe export"
    )
    parser.add_argument("--repo", required=True, type=Path, help="the model repository folder")
    parser.add_argument(
        "--max-batch",
        type=int,
        default=8,
        metavar="N",
        help="max_batch_size for tails with a free batch dimension (default 8)",
    )
    parser.add_argument(
        "--queue-delay-us",
        type=int,
        default=0,
        metavar="T",
        help="dynamic batching's max_queue_delay_microseconds (default 0)",
    )
    parser.add_argument("--instances", type=int, default=1, help="instances of each tail (default 1)")
    parser.add_argument(
        "--kind", default="auto", help="instance kind: auto, cpu or gpu (default auto: Triton chooses)"
    )
    parser.add_argument(
        "--tensorrt",
        action="store_true",
        help="run the tails through ONNX Runtime's TensorRT execution provider on GPUs",
    )
    parser.add_argument(
        "--no-compiled",
        dest="use_compiled",
        action="store_false",
        help="write tail.onnx even where `splitpipe compile` built a tail for ONNX Runtime",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from splitpipe.errors import check_output_dir, check_writable
    from splitpipe.server.triton import TritonOptions, write_repository

    check_output_dir(args.repo, "--repo", "the model repository")
    check_writable(args.repo, "--repo", inside=True)

    options = TritonOptions(
        max_batch=args.max_batch,
        queue_delay_us=args.queue_delay_us,
        instances=args.instances,
        kind=args.kind,
        tensorrt=args.tensorrt,
        use_compiled=args.use_compiled,
    )
    for entry in write_repository(args.export_dirs, args.repo, options):
        batching = f"batches up to {args.max_batch}" if entry.batched else "no batching (fixed batch)"
        print(f"wrote {entry.path} from {entry.source}: inputs {', '.join(entry.inputs)}; {batching}")
    print(f"start Triton with: tritonserver --model-repository {args.repo}")
    return 0
