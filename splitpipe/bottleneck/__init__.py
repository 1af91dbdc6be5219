"""Learned bottlenecks, trained as in BottleFit (Matsubara et al., 2022).

``make_bottleneck`` takes a trained teacher, replaces its computation up to a cut by a narrow
encoder and a decoder (:mod:`.student`), trains them in BottleFit's two stages
(:mod:`.train`), and writes the result as an ordinary export directory: ``head.onnx`` is the
encoder, ``tail.onnx`` the decoder and the teacher's tail, cut at the bottleneck by the
planner's own cut finder and verified by ``splitpipe export``'s check. The agent and the server
run it as they run any split. Accuracy and bytes per frame are measured on held-out images, on
the wire path (ONNX Runtime, the codec's encode and decode per frame) as well as in torch.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from splitpipe.bottleneck.train import Progress, TrainOptions
from splitpipe.errors import SplitpipeError


@dataclass(frozen=True)
class BottleneckRequest:
    model: str
    at: str
    data: str
    weights: str | None = None
    input_shape: tuple[int, ...] | None = None
    channels: int = 4
    width: int = 64
    stride: int = 1
    codec: str = "int8"
    holdout: int = 500
    link: str = "20mbit,10ms"
    name: str | None = None
    train: TrainOptions = field(default_factory=TrainOptions)


def _quiet(_: str) -> None:
    pass


def _cut_id(analysis: Any, shape: tuple[int, ...]) -> int:
    """The planner's cut at the encoder's output: the first one-tensor cut of that shape. The
    encoder's own tensors are wider (``--width`` > ``--channels``), and the model's input is never
    a cut, so nothing before it matches, even where the input has the bottleneck's shape."""
    for cut in analysis.cuts:
        if len(cut.tensors) == 1 and tuple(analysis.graph.info(cut.tensors[0]).shape) == shape:
            return int(cut.id)
    raise RuntimeError(f"no cut of shape {shape} in the student's graph")


def _wire(out: Path, x: np.ndarray, codec_name: str) -> tuple[np.ndarray, list[int]]:
    """Every held-out image through head.onnx, the codec and tail.onnx, one frame at a time as
    the agent sends them: (outputs, payload bytes per frame)."""
    import onnxruntime as ort

    from splitpipe.kernels import decode, get_codec

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    head = ort.InferenceSession(str(out / "head.onnx"), opts, providers=["CPUExecutionProvider"])
    tail = ort.InferenceSession(str(out / "tail.onnx"), opts, providers=["CPUExecutionProvider"])
    codec = get_codec(codec_name)
    h_in, t_in = head.get_inputs()[0].name, tail.get_inputs()[0].name
    outs, sizes = [], []
    for i in range(len(x)):
        (z,) = head.run(None, {h_in: x[i : i + 1]})
        payload, meta = codec.encode(z)
        sizes.append(len(payload))
        outs.append(tail.run(None, {t_in: decode(payload, meta)})[0])
    return np.concatenate(outs), sizes


def _mean_bytes(arrays: np.ndarray, codec_name: str) -> float:
    from splitpipe.kernels import get_codec

    codec = get_codec(codec_name)
    return float(np.mean([len(codec.encode(arrays[i : i + 1])[0]) for i in range(len(arrays))]))


def make_bottleneck(req: BottleneckRequest, out: str | Path, progress: Progress = _quiet) -> dict[str, Any]:
    """Train a learned bottleneck for ``req`` and write it as an export directory at ``out``.

    Returns the ``bottleneck`` section that is also stored in the manifest."""
    import onnx
    import torch

    from splitpipe.bottleneck.data import load_dataset
    from splitpipe.bottleneck.student import build_student
    from splitpipe.bottleneck.train import agreement, distill, finetune, predictions, top1
    from splitpipe.kernels import get_codec
    from splitpipe.partition.export import BOTTLENECK_FILES, check_export_target, export_split
    from splitpipe.partition.load import DEFAULT_IMAGE_SHAPE, export_torch, load_torch_module
    from splitpipe.partition.plan import PlanRequest, analyse

    # the folder and the name before training, which takes minutes: the export would refuse them
    out = check_export_target(out, req.name, BOTTLENECK_FILES)
    req.train.check()
    get_codec(req.codec)  # an unknown codec fails before any training
    shape = tuple(req.input_shape or DEFAULT_IMAGE_SHAPE)
    torch.manual_seed(req.train.seed)
    teacher, preprocess = load_torch_module(req.model, req.weights)
    teacher.eval()
    if preprocess is not None:
        preprocess["size"] = list(shape[-2:])
    data = load_dataset(req.data, shape, preprocess)
    train_set, held = data.split(req.holdout, seed=req.train.seed)
    progress(
        f"{len(train_set.x)} training and {len(held.x)} held-out images from {data.name}"
        + ("" if data.y is not None else " (no labels: the teacher alone teaches)")
    )
    student = build_student(teacher, req.at, shape, req.channels, req.width, req.stride)
    progress(
        f"cut at {student.at}: the teacher sends {list(student.target_shape[1:])}, the bottleneck "
        f"{list(student.bottleneck_shape[1:])}"
    )
    history: dict[str, Any] = {"distillation": distill(student, train_set, req.train, progress)}
    distilled_top1 = top1(predictions(student.model, held.x), held.y)  # what fine-tuning starts from
    history["finetuning"] = finetune(student, teacher, train_set, req.train, progress)
    teacher_out = predictions(teacher, held.x)
    student_out = predictions(student.model, held.x)
    teacher_cut = predictions(student.teacher_head, held.x[:200])

    stage = out.with_name(f".{out.name}.student")
    shutil.rmtree(stage, ignore_errors=True)
    try:
        stage.mkdir(parents=True)
    except OSError as exc:
        raise SplitpipeError(f"cannot write the export to {out}: {exc.strerror or exc} ({stage})") from None
    try:
        onnx.save_model(export_torch(student.model, shape), str(stage / "student.onnx"))
        torch.save(student.model.state_dict(), stage / "student.pt")
        final_onnx = out / "student.onnx"
        plan_req = PlanRequest(
            model=str(stage / "student.onnx"),
            codec=req.codec,
            link=req.link,
            profile_mode="analytic",
        )
        analysis = analyse(plan_req)
        cut_id = _cut_id(analysis, student.bottleneck_shape)
        teacher_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", req.model.split(":")[-1]).strip("_.")
        progress(f"exporting the split at the bottleneck (cut {cut_id} of the student)")
        export_split(
            plan_req,
            cut_id,
            out,
            analysis=analysis,
            codec=req.codec,
            name=req.name or f"{teacher_name}-bottleneck-{re.sub(r'[^A-Za-z0-9_.-]+', '_', student.at)}",
            replaces=BOTTLENECK_FILES,
        )
        for name in ("student.onnx", "student.pt"):
            shutil.move(str(stage / name), str(out / name))
    finally:
        shutil.rmtree(stage, ignore_errors=True)

    progress(f"measuring {len(held.x)} held-out frames on the wire path ({req.codec})")
    wire_out, sizes = _wire(out, held.x, req.codec)
    input_bytes = int(np.prod(shape[1:])) * 4
    bottleneck_bytes = float(np.mean(sizes))
    result: dict[str, Any] = {
        "teacher": req.model,
        "weights": req.weights,
        "at": student.at,
        "channels": req.channels,
        "width": req.width,
        "stride": req.stride,
        "codec": req.codec,
        "data": {
            "name": data.name,
            "train": len(train_set.x),
            "held_out": len(held.x),
            "labelled": data.y is not None,
        },
        "train": asdict(req.train),
        "history": history,
        "shapes": {
            "input": list(shape),
            "teacher_cut": list(student.target_shape),
            "bottleneck": list(student.bottleneck_shape),
        },
        "params": {
            "teacher_head": sum(p.numel() for p in student.teacher_head.parameters()),
            "encoder": sum(p.numel() for p in student.encoder.parameters()),
            "decoder": sum(p.numel() for p in student.decoder.parameters()),
        },
        # measured on the held-out images; accuracy in percent, bytes per frame
        "measured": {
            "teacher_top1": top1(teacher_out, held.y),
            "student_top1_after_distillation": distilled_top1,
            "student_top1": top1(student_out, held.y),
            "wire_top1": top1(wire_out, held.y),
            "wire_agreement_with_teacher": agreement(wire_out, teacher_out),
            "wire_agreement_with_student": agreement(wire_out, student_out),
            "input_bytes": input_bytes,
            "teacher_cut_bytes_raw": int(np.prod(student.target_shape[1:])) * 4,
            "teacher_cut_bytes_codec": _mean_bytes(teacher_cut, req.codec),
            "bottleneck_bytes_codec": bottleneck_bytes,
            "compression_vs_input": 1.0 - bottleneck_bytes / input_bytes,
        },
    }
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["model"] = req.model
    manifest["preprocess"] = preprocess
    manifest["request"]["model"] = str(final_onnx)
    manifest["bottleneck"] = result
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(manifest_path)
    return result
