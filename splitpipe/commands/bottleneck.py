"""``splitpipe bottleneck``: train a learned bottleneck (BottleFit) and write it as an export."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "bottleneck",
        help="train a learned bottleneck at a cut (BottleFit: head distillation, then fine-tuning)",
        description="Replace a trained model's layers up to --at by a narrow encoder (the device's head) "
        "and a decoder (on the server), train them as BottleFit does (head distillation, then fine-tuning "
        "with the encoder frozen), and write the result as an export directory that serve and agent run. "
        "Accuracy and bytes per frame are measured on held-out images.",
    )
    p.add_argument("model", help="the trained teacher: torchvision:NAME or package.module:callable")
    p.add_argument("--weights", help="the teacher's state_dict (without it the teacher is untrained)")
    p.add_argument("--input-shape", help="e.g. 1,3,224,224 (default 1,3,224,224)")
    p.add_argument("--at", required=True, help="the module (e.g. layer1) whose output the decoder rebuilds")
    p.add_argument(
        "--data",
        required=True,
        help="mnist, digits, or a folder of pictures (one sub-folder per class, or none)",
    )
    p.add_argument("--out", required=True, help="the export directory to write")
    p.add_argument("--channels", type=int, default=4, help="channels of the bottleneck (default 4)")
    p.add_argument(
        "--width", type=int, default=64, help="channels inside the encoder and decoder (default 64)"
    )
    p.add_argument(
        "--stride",
        type=int,
        default=1,
        help="the bottleneck's resolution is the cut's divided by this (default 1)",
    )
    p.add_argument("--codec", default="int8", help="codec of the bottleneck on the wire (default int8)")
    p.add_argument("--distill-epochs", type=int, default=10, help="epochs of head distillation (default 10)")
    p.add_argument(
        "--finetune-epochs", type=int, default=5, help="epochs of fine-tuning (default 5; 0 skips it)"
    )
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of head distillation (default 1e-3)")
    p.add_argument(
        "--finetune-lr", type=float, default=1e-4, help="learning rate of fine-tuning (default 1e-4)"
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=0.5,
        help="weight of the labels' loss in fine-tuning; the rest is the teacher's",
    )
    p.add_argument(
        "--holdout", type=int, default=500, help="images kept back to measure accuracy (default 500)"
    )
    p.add_argument(
        "--link", default="20mbit,10ms", help="link for the export's predictions (default 20mbit,10ms)"
    )
    p.add_argument("--name", help="model name the server serves the tail under")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def _pct(value: float | None) -> str:
    return "n/a (no labels)" if value is None else f"{value:.2f} %"


def run(args: argparse.Namespace) -> int:
    from splitpipe.bottleneck import BottleneckRequest, make_bottleneck
    from splitpipe.bottleneck.train import TrainOptions
    from splitpipe.errors import check_output_dir, check_writable
    from splitpipe.partition.load import parse_shape

    # before training, which takes minutes
    check_output_dir(args.out, "--out", "the export")
    check_writable(args.out, "--out")
    req = BottleneckRequest(
        model=args.model,
        at=args.at,
        data=args.data,
        weights=args.weights,
        input_shape=parse_shape(args.input_shape) if args.input_shape else None,
        channels=args.channels,
        width=args.width,
        stride=args.stride,
        codec=args.codec,
        holdout=args.holdout,
        link=args.link,
        name=args.name,
        train=TrainOptions(
            distill_epochs=args.distill_epochs,
            finetune_epochs=args.finetune_epochs,
            batch=args.batch,
            lr=args.lr,
            finetune_lr=args.finetune_lr,
            alpha=args.alpha,
            seed=args.seed,
        ),
    )

    def progress(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    r = make_bottleneck(req, args.out, progress)
    m, s = r["measured"], r["shapes"]
    print(f"learned bottleneck at {r['at']} of {args.model}, written to {args.out}")
    print(
        f"  the teacher sends {s['teacher_cut'][1:]} there ({m['teacher_cut_bytes_codec']:,.0f} B/frame with "
        f"{r['codec']}); the bottleneck {s['bottleneck'][1:]}: {m['bottleneck_bytes_codec']:,.0f} B/frame, "
        f"{100 * m['compression_vs_input']:.1f} % less than the float32 input ({m['input_bytes']:,} B)"
    )
    p = r["params"]
    print(
        f"  device head: {p['encoder']:,} parameters (the teacher's layers it replaces: {p['teacher_head']:,})"
    )
    held = r["data"]["held_out"]
    print(
        f"  top-1 on {held} held-out images (measured): teacher {_pct(m['teacher_top1'])}, "
        f"student {_pct(m['student_top1'])}, through head.onnx, {r['codec']} and tail.onnx {_pct(m['wire_top1'])}"
    )
    if m["wire_agreement_with_teacher"] is not None:
        print(
            f"  the split agrees with the teacher's top-1 on {m['wire_agreement_with_teacher']:.2f} % of them"
        )
    print(f"  serve it: splitpipe serve {args.out}; run it: splitpipe agent {args.out} --server HOST:PORT")
    return 0
