"""BottleFit's two training stages, and accuracy on held-out images.

1. **Head distillation**: only the encoder and the decoder learn, to reproduce the teacher's
   tensor at the cut (mean squared error); the teacher's tail is not involved.
2. **Fine-tuning**: the encoder (what runs on the device) is frozen, batch statistics
   included; the decoder and the tail learn from the labels (cross-entropy) and from the
   teacher's outputs (knowledge distillation: KL divergence at temperature T, weighted
   ``1 - alpha``). Without labels, only the teacher teaches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from splitpipe.bottleneck.data import Dataset
from splitpipe.bottleneck.student import Student
from splitpipe.errors import SplitpipeError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TrainOptions:
    distill_epochs: int = 10
    finetune_epochs: int = 5
    batch: int = 64
    lr: float = 1e-3
    finetune_lr: float = 1e-4
    #: weight of the cross-entropy with the labels in fine-tuning; the rest is distillation
    alpha: float = 0.5
    temperature: float = 2.0
    seed: int = 0

    def check(self) -> None:
        if self.distill_epochs < 1 or self.finetune_epochs < 0 or self.batch < 1:
            raise SplitpipeError(
                "--distill-epochs must be at least 1, --finetune-epochs at least 0, --batch at least 1"
            )
        if not 0.0 <= self.alpha <= 1.0:
            raise SplitpipeError(
                f"--alpha must be in [0, 1] (the labels' share of the loss), got {self.alpha}"
            )
        if not self.temperature > 0:
            raise SplitpipeError(f"the distillation temperature must be positive, got {self.temperature}")
        if not (self.lr > 0 and self.finetune_lr > 0):
            raise SplitpipeError(f"learning rates must be positive, got {self.lr} and {self.finetune_lr}")
        if self.seed < 0:
            raise SplitpipeError(f"--seed must be a non-negative integer, got {self.seed}")


def _batches(n: int, size: int, gen: Any) -> Any:
    import torch

    order = torch.randperm(n, generator=gen)
    for i in range(0, n, size):
        idx = order[i : i + size]
        if len(idx) > 1 or n == 1:  # batch norm cannot learn from a batch of one
            yield idx


def _logits(out: Any) -> Any:
    import torch

    if not isinstance(out, torch.Tensor):
        raise SplitpipeError(
            f"the model returns {type(out).__name__}; learned bottlenecks need a model with one output tensor"
        )
    return out


def distill(
    student: Student, data: Dataset, opts: TrainOptions, progress: Progress
) -> list[dict[str, float]]:
    """Stage 1: the encoder and decoder learn the teacher's tensor at the cut."""
    import torch

    gen = torch.Generator().manual_seed(opts.seed)
    x = torch.from_numpy(data.x)
    head = student.teacher_head.eval()
    enc, dec = student.encoder.train(), student.decoder.train()
    params = [*enc.parameters(), *dec.parameters()]
    opt = torch.optim.Adam(params, lr=opts.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=opts.distill_epochs)
    history = []
    for epoch in range(opts.distill_epochs):
        t0, total, count = time.perf_counter(), 0.0, 0
        for idx in _batches(len(x), opts.batch, gen):
            with torch.no_grad():
                target = head(x[idx])
            loss = torch.nn.functional.mse_loss(dec(enc(x[idx])), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, count = total + loss.item() * len(idx), count + len(idx)
        sched.step()
        row = {"epoch": epoch + 1, "mse": total / count, "seconds": time.perf_counter() - t0}
        history.append(row)
        progress(
            f"head distillation {epoch + 1}/{opts.distill_epochs}: mse {row['mse']:.4g} ({row['seconds']:.1f} s)"
        )
    return history


def finetune(
    student: Student, teacher: Any, data: Dataset, opts: TrainOptions, progress: Progress
) -> list[dict[str, float]]:
    """Stage 2: the encoder is frozen; the decoder and the tail learn from labels and teacher."""
    import torch
    import torch.nn.functional as F

    if opts.finetune_epochs == 0:
        return []
    gen = torch.Generator().manual_seed(opts.seed + 1)
    x = torch.from_numpy(data.x)
    y = None if data.y is None else torch.from_numpy(data.y)
    alpha = opts.alpha if y is not None else 0.0
    teacher.eval()
    model = student.model.train()
    student.encoder.eval()
    for p in student.encoder.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=opts.finetune_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=opts.finetune_epochs)
    t = opts.temperature
    history = []
    for epoch in range(opts.finetune_epochs):
        t0, total, count = time.perf_counter(), 0.0, 0
        for idx in _batches(len(x), opts.batch, gen):
            with torch.no_grad():
                soft = _logits(teacher(x[idx]))
            out = _logits(model(x[idx]))
            if out.dim() == 2:
                kd = F.kl_div(
                    F.log_softmax(out / t, 1),
                    F.log_softmax(soft / t, 1),
                    log_target=True,
                    reduction="batchmean",
                )
                loss = (1 - alpha) * kd * t * t
                if y is not None and alpha > 0:
                    loss = loss + alpha * F.cross_entropy(out, y[idx])
            else:  # not a classifier: match the teacher's outputs
                loss = F.mse_loss(out, soft)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, count = total + loss.item() * len(idx), count + len(idx)
        sched.step()
        row = {"epoch": epoch + 1, "loss": total / count, "seconds": time.perf_counter() - t0}
        history.append(row)
        progress(
            f"fine-tuning {epoch + 1}/{opts.finetune_epochs}: loss {row['loss']:.4g} ({row['seconds']:.1f} s)"
        )
    for p in student.encoder.parameters():
        p.requires_grad_(True)
    model.eval()
    return history


def predictions(model: Any, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """The model's outputs on ``x``, in eval mode."""
    import torch

    model.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            outs.append(_logits(model(torch.from_numpy(x[i : i + batch]))).numpy())
    return np.concatenate(outs)


def top1(out: np.ndarray, y: np.ndarray | None) -> float | None:
    """Top-1 accuracy in percent, or None without labels or for a non-classifier output."""
    if y is None or out.ndim != 2:
        return None
    return 100.0 * float((out.argmax(1) == y).mean())


def agreement(a: np.ndarray, b: np.ndarray) -> float | None:
    """How often two classifiers' top-1 classes agree, in percent."""
    if a.ndim != 2:
        return None
    return 100.0 * float((a.argmax(1) == b.argmax(1)).mean())
