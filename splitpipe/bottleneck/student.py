"""The student network of BottleFit-style training (Matsubara et al., 2022).

The teacher is traced with torch.fx. Everything that computes the tensor at the cut (``at``:
a module such as ``layer1``, or an fx node name such as ``add_2``) is replaced by an
*encoder*, which runs on the device and ends in a narrow bottleneck of ``channels`` channels,
and a *decoder*, which runs on the server and rebuilds the teacher's tensor from it; the rest
of the teacher (the tail) is kept. A cut is valid only where one tensor carries everything
onward: a skip connection that jumps over it would need more than the bottleneck on the wire.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from splitpipe.errors import SplitpipeError

ENCODER = "bottleneck_encoder"
DECODER = "bottleneck_decoder"


@dataclass
class Student:
    """The student, the teacher's head up to the cut (the distillation target), and shapes."""

    model: Any  # torch.fx.GraphModule: decoder(encoder(x)) followed by the teacher's tail
    encoder: Any
    decoder: Any
    teacher_head: Any  # torch.fx.GraphModule: x -> the teacher's tensor at the cut
    at: str
    target_shape: tuple[int, ...]  # the teacher's tensor at the cut, batch 1
    bottleneck_shape: tuple[int, ...]  # the encoder's output, batch 1


def _trace(teacher: Any, leaves: set[str], example: Any) -> Any:
    import torch.fx as fx
    from torch.fx.passes.shape_prop import ShapeProp

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m: Any, qualname: str) -> bool:
            return qualname in leaves or super().is_leaf_module(m, qualname)

    try:
        graph = Tracer().trace(teacher)
    except Exception as exc:
        raise SplitpipeError(
            f"torch.fx cannot trace this model ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "learned bottlenecks need a model without data-dependent control flow"
        ) from None
    gm = fx.GraphModule(teacher, graph)
    ShapeProp(gm).propagate(example)
    return gm


def _names(gm: Any) -> dict[Any, str]:
    """What users call each node: a module's path (``layer1``) where one call of it is in the
    graph, else fx's unique node name (``layer1_0_relu_1`` for a ReLU module called twice)."""
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    return {
        n: str(n.target) if n.op == "call_module" and calls[n.target] == 1 else str(n.name)
        for n in gm.graph.nodes
    }


def cut_points(gm: Any) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every node of ``gm`` whose 4-D output alone carries the computation on:
    no earlier value is used after it."""
    nodes = list(gm.graph.nodes)
    names = _names(gm)
    index = {n: i for i, n in enumerate(nodes)}
    data = [n.op not in ("get_attr", "output") for n in nodes]
    points: list[tuple[str, tuple[int, ...]]] = []
    reach = 0  # the furthest use of any value computed so far
    for i, n in enumerate(nodes):
        meta = n.meta.get("tensor_meta")
        shape = tuple(int(d) for d in meta.shape) if meta is not None and hasattr(meta, "shape") else ()
        if n.op not in ("placeholder", "output", "get_attr") and reach <= i and len(shape) == 4:
            points.append((names[n], shape))
        if data[i]:
            reach = max([reach, *(index[u] for u in n.users)])
    return points


def _find(gm: Any, at: str) -> Any:
    for n, name in _names(gm).items():
        if n.op not in ("placeholder", "output", "get_attr") and at in (name, n.name):
            return n
    return None


def _blocks(cin: int, cout: int, width: int, down: int, up: int) -> tuple[Any, Any]:
    """Encoder: ``down`` stride-2 3x3 convolutions (a stride-1 one if ``down`` is 0), each with
    batch norm and ReLU, then a 1x1 convolution to ``cout`` bottleneck channels. Decoder: a 3x3
    convolution back to ``width``, ``up`` 2x transposed convolutions, a 3x3 convolution, and a
    1x1 convolution to ``cin`` (the teacher's channels at the cut)."""
    import torch.nn as nn

    def conv(a: int, b: int, stride: int = 1) -> list[nn.Module]:
        return [
            nn.Conv2d(a, b, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(b),
            nn.ReLU(inplace=True),
        ]

    enc: list[nn.Module] = []
    c = cin
    for _ in range(max(down, 1)):
        enc += conv(c, width, stride=2 if down else 1)
        c = width
    enc.append(nn.Conv2d(width, cout, 1))
    dec: list[nn.Module] = conv(cout, width)
    for _ in range(up):
        dec += [
            nn.ConvTranspose2d(width, width, 2, stride=2, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
    dec += conv(width, width)
    return nn.Sequential(*enc), dec


def _power_of_two(ratio: float) -> int | None:
    k = round(ratio)
    return k.bit_length() - 1 if k >= 1 and k == ratio and k & (k - 1) == 0 else None


def build_student(
    teacher: Any,
    at: str,
    input_shape: tuple[int, ...],
    channels: int,
    width: int = 64,
    stride: int = 1,
) -> Student:
    """Replace the teacher's computation up to ``at`` by an encoder and a decoder.

    The bottleneck has ``channels`` channels at 1/``stride`` of the teacher's resolution at the
    cut; ``width`` is the channel count inside the encoder and the decoder."""
    import torch
    import torch.nn as nn

    if channels < 1 or width < 1:
        raise SplitpipeError(f"--channels and --width must be positive, got {channels} and {width}")
    if channels >= width:
        raise SplitpipeError(f"the bottleneck (--channels {channels}) must be narrower than --width {width}")
    up = _power_of_two(stride)
    if up is None:
        raise SplitpipeError(f"--stride must be a power of two (1, 2, 4, ...), got {stride}")
    teacher = copy.deepcopy(teacher).eval()
    example = torch.zeros(*input_shape)
    modules = dict(teacher.named_modules())
    # the top-level modules stay whole (their names are the cuts users know), except one that
    # holds ``at``, which is traced through down to it
    top = {name for name, _ in teacher.named_children() if not at.startswith(name + ".")}
    gm = _trace(teacher, top | ({at} if at in modules else set()), example)
    target = _find(gm, at)
    if target is None and at not in modules:
        # an fx node name from inside a module (``layer1_0_relu_1``): trace through everything
        fine = _trace(teacher, set(), example)
        if (found := _find(fine, at)) is not None:
            gm, target = fine, found
    valid = dict(cut_points(gm))
    names = _names(gm)
    name = None if target is None else names[target]
    if name is None or name not in valid:
        listed = ", ".join(f"{n} {list(s[1:])}" for n, s in valid.items()) or "none"
        calls = [names[n] for n in gm.graph.nodes if n.op == "call_module" and n.target == at]
        if len(calls) > 1:
            why = f"is called {len(calls)} times in forward(); name one call: {', '.join(calls)}"
        elif target is None:
            why = "is not a module or node of the model"
        else:
            why = "is not a valid cut"
        raise SplitpipeError(
            f"--at {at!r} {why} (a cut must be one 4-D tensor that no skip connection jumps over); "
            f"valid cuts: {listed}"
        )
    shape = valid[name]
    _, cin_model, h, w = input_shape
    _, c_t, h_t, w_t = shape
    if h_t % stride or w_t % stride:
        raise SplitpipeError(f"--stride {stride} does not divide the cut's {h_t}x{w_t} resolution")
    h_b, w_b = h_t // stride, w_t // stride
    down = _power_of_two(h / h_b)
    if down is None or _power_of_two(w / w_b) != down:
        raise SplitpipeError(
            f"the bottleneck's {h_b}x{w_b} must be the input's {h}x{w} divided by a power of two "
            "(choose another --at or --stride)"
        )
    encoder, dec_layers = _blocks(cin_model, channels, width, down, up)
    decoder = nn.Sequential(*dec_layers, nn.Conv2d(width, c_t, 1))

    head = copy.deepcopy(gm)
    head_target = _find(head, at)
    out = next(n for n in head.graph.nodes if n.op == "output")
    out.args = (head_target,)
    head.graph.eliminate_dead_code()
    head.delete_all_unused_submodules()
    head.recompile()

    student = copy.deepcopy(gm)
    student.add_submodule(ENCODER, encoder)
    student.add_submodule(DECODER, decoder)
    graph = student.graph
    (inp,) = [n for n in graph.nodes if n.op == "placeholder"]
    s_target = _find(student, at)
    with graph.inserting_after(inp):
        enc = graph.call_module(ENCODER, (inp,))
    with graph.inserting_after(enc):
        dec = graph.call_module(DECODER, (enc,))
    s_target.replace_all_uses_with(dec)
    graph.eliminate_dead_code()
    if set(inp.users) != {enc}:
        raise RuntimeError(f"the input is still used beside the encoder after replacing {at}")
    student.delete_all_unused_submodules()
    student.recompile()
    encoder.eval(), decoder.eval()  # no batch statistics from the zeros
    with torch.no_grad():
        z = tuple(encoder(example).shape)
        got = tuple(decoder(encoder(example)).shape)
    if got != tuple(shape):
        raise RuntimeError(f"decoder output {got} does not match the cut {tuple(shape)}")
    return Student(student, encoder, decoder, head, name, tuple(shape), z)
