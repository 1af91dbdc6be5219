"""Building sub-models (head, tail, segments) out of a :class:`Graph` and a set of nodes.

Weights are not copied: initializers keep pointing to the cached model's external data file, so
a sub-model written next to it is a few kilobytes and ONNX Runtime reads only the weights it
uses. :func:`self_contained` loads the weights in when a sub-model leaves the cache (export).

A crossing tensor that is also a graph input or output cannot keep its name on both sides (a
name is either an input or produced inside a graph), so it travels as ``NAME.cut``: the head
copies it out with an Identity and the tail copies it back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from splitpipe.partition.cuts import Cut
from splitpipe.partition.graph import Graph, TensorInfo

if TYPE_CHECKING:
    import onnx

CUT_SUFFIX = ".cut"


def wire_name(graph: Graph, tensor: str) -> str:
    """The name a crossing tensor has between head and tail."""
    if tensor in graph.inputs or tensor in graph.outputs:
        return tensor + CUT_SUFFIX
    return tensor


def _value_info(info: TensorInfo, name: str | None = None) -> onnx.ValueInfoProto:
    import onnx

    elem = onnx.helper.np_dtype_to_tensor_dtype(info.dtype)
    return onnx.helper.make_tensor_value_info(name or info.name, elem, list(info.shape))


def build_model(
    graph: Graph,
    nodes: int,
    inputs: Sequence[str],
    outputs: Sequence[str],
    *,
    rename_in: dict[str, str] | None = None,
    rename_out: dict[str, str] | None = None,
    name: str = "part",
) -> onnx.ModelProto:
    """A model computing ``outputs`` from ``inputs`` with the non-constant nodes in bitset ``nodes``.

    ``rename_in`` maps an input tensor to the name it arrives under; ``rename_out`` maps an
    output tensor to the name it leaves under (both through Identity nodes).
    """
    import onnx

    rename_in = rename_in or {}
    rename_out = rename_out or {}
    node_ids = [graph.nodes[k] for k in graph.members(nodes)]
    chosen = sorted([*graph.needed_constant_nodes(node_ids), *node_ids])

    new_nodes: list[onnx.NodeProto] = []
    for tensor, arrives_as in rename_in.items():
        new_nodes.append(onnx.helper.make_node("Identity", [arrives_as], [tensor], name=f"{tensor}/from_cut"))
    new_nodes.extend(graph.all_nodes[i] for i in chosen)
    for tensor, leaves_as in rename_out.items():
        new_nodes.append(onnx.helper.make_node("Identity", [tensor], [leaves_as], name=f"{tensor}/to_cut"))

    used = {n for i in chosen for n in graph.node_inputs[i]} | set(outputs)
    initializers = [init for init in graph.model.graph.initializer if init.name in used]
    produced = {o for i in chosen for o in graph.all_nodes[i].output}
    value_info = [
        _value_info(graph.info(t)) for t in sorted(produced) if t and t not in outputs and t in graph._info
    ]
    g = onnx.helper.make_graph(
        new_nodes,
        name,
        [_value_info(graph.info(t), rename_in.get(t)) for t in inputs],
        [_value_info(graph.info(t), rename_out.get(t)) for t in outputs],
        initializer=initializers,
        value_info=value_info,
    )
    model = onnx.helper.make_model(
        g,
        opset_imports=list(graph.model.opset_import),
        ir_version=graph.model.ir_version,
        producer_name="splitpipe",
    )
    return model


def head_model(graph: Graph, cut: Cut) -> onnx.ModelProto:
    ins = [t for t in graph.inputs if graph.consumers.get(t, 0) & cut.head or t in cut.tensors]
    renames = {t: wire_name(graph, t) for t in cut.tensors if wire_name(graph, t) != t}
    return build_model(graph, cut.head, ins, list(cut.tensors), rename_out=renames, name="head")


def tail_model(graph: Graph, cut: Cut) -> onnx.ModelProto:
    renames = {t: wire_name(graph, t) for t in cut.tensors if wire_name(graph, t) != t}
    return build_model(
        graph, graph.full & ~cut.head, list(cut.tensors), graph.outputs, rename_in=renames, name="tail"
    )


def segment_model(graph: Graph, before: int, after: int) -> tuple[onnx.ModelProto, list[str], list[str]]:
    """The nodes in ``after`` but not ``before``, with the tensors they read and those needed later."""
    nodes = after & ~before
    produced: set[str] = set()
    reads: list[str] = []
    for k in graph.members(nodes):
        produced.update(graph.node(k).output)
    for k in graph.members(nodes):
        for t in graph.node_inputs[graph.nodes[k]]:
            if t not in produced and t not in graph.constants and t not in reads:
                reads.append(t)
    outs = [t for t in graph.crossing(after) if t in produced]
    return build_model(graph, nodes, reads, outs, name="segment"), reads, outs


def self_contained(model: onnx.ModelProto, base_dir: Path) -> onnx.ModelProto:
    """A copy of ``model`` with its external weights read in from ``base_dir``."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    out = onnx.ModelProto()
    out.CopyFrom(model)
    if any(uses_external_data(t) for t in out.graph.initializer):
        load_external_data_for_model(out, str(base_dir))
    return out


def save_beside(model: onnx.ModelProto, graph: Graph, name: str) -> Path:
    """Write a weight-sharing sub-model next to the cached model so that its external data resolves."""
    import onnx

    if graph.model_path is None:
        raise RuntimeError("the graph was not loaded from a cached model file")
    path = graph.model_path.with_name(name)
    onnx.save_model(model, str(path))
    return path


def tensor_bytes(graph: Graph, tensors: Iterable[str]) -> int:
    return sum(graph.info(t).nbytes for t in tensors)
