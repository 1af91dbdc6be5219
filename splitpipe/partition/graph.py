"""The dataflow graph of an ONNX model, as the cut finder and the exporter see it.

Nodes are kept in the model's topological order. Tensors that depend only on weights and
constants are *constant*: they never cross a cut, and the nodes computing them are copied into
whichever half needs them. Nodes whose results reach no graph output are dead and dropped.
Sets of nodes are Python ints used as bitsets over the non-constant nodes, which keeps the
search over cuts fast on graphs with thousands of nodes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from splitpipe.errors import SplitpipeError

if TYPE_CHECKING:
    import onnx

_LOGGER = logging.getLogger(__name__)

# Ops whose output differs between runs even on constant inputs: never treated as constant.
_NONDETERMINISTIC = {
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype.name, "shape": list(self.shape)}


def _np_dtype(elem_type: int) -> np.dtype[Any]:
    import onnx

    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def subgraph_inputs(node: onnx.NodeProto) -> list[str]:
    """Outer-scope names a node's subgraphs (If, Loop, Scan) read, besides its own inputs."""
    import onnx

    found: list[str] = []
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            local = {i.name for i in g.input} | {i.name for i in g.initializer}
            for sub in g.node:
                for name in [*sub.input, *subgraph_inputs(sub)]:
                    if name and name not in local and name not in found:
                        found.append(name)
                local.update(sub.output)
    return found


class Graph:
    """Index over an ONNX model: producers, consumers, constants, shapes, and node bitsets."""

    def __init__(self, model: onnx.ModelProto, model_path: Path | None = None) -> None:
        self.model = model
        self.model_path = model_path
        g = model.graph
        self.initializers = {i.name for i in g.initializer}
        self.inputs = [i.name for i in g.input if i.name not in self.initializers]
        self.outputs = [o.name for o in g.output]
        all_nodes = list(g.node)

        # inputs of each node, including outer-scope names read by its subgraphs
        node_inputs = [[n for n in (*node.input, *subgraph_inputs(node)) if n] for node in all_nodes]
        producer: dict[str, int] = {}
        for idx, node in enumerate(all_nodes):
            for out in node.output:
                if out:
                    producer[out] = idx
        known = set(self.initializers) | set(self.inputs)
        for idx, ins in enumerate(node_inputs):
            for name in ins:
                if name not in known and name not in producer:
                    raise SplitpipeError(
                        f"tensor {name!r} read by node {all_nodes[idx].name!r} is never produced"
                    )
                if producer.get(name, -1) >= idx:
                    raise SplitpipeError("the ONNX graph's nodes are not in topological order")
            known.update(all_nodes[idx].output)

        # constant propagation
        const_names = set(self.initializers)
        const_node = [False] * len(all_nodes)
        for idx, node in enumerate(all_nodes):
            if node.op_type in _NONDETERMINISTIC:
                continue
            if all(n in const_names for n in node_inputs[idx]):
                const_node[idx] = True
                const_names.update(o for o in node.output if o)
        self.constants = const_names

        # liveness: a non-constant node is live if some output reaches a graph output
        needed = set(self.outputs)
        live = [False] * len(all_nodes)
        for idx in range(len(all_nodes) - 1, -1, -1):
            if any(o in needed for o in all_nodes[idx].output):
                live[idx] = True
                needed.update(node_inputs[idx])
        dead = sum(1 for i, n in enumerate(all_nodes) if not live[i] and not const_node[i])
        if dead:
            _LOGGER.debug("dropping %d nodes that reach no output", dead)

        self.all_nodes = all_nodes
        self.node_inputs = node_inputs
        self.const_node_ids = [i for i, c in enumerate(const_node) if c and live[i]]
        #: positions (into all_nodes) of the non-constant live nodes; bit k of a mask is nodes[k]
        self.nodes = [i for i in range(len(all_nodes)) if live[i] and not const_node[i]]
        self.n = len(self.nodes)
        if self.n == 0:
            raise SplitpipeError("the model has no computation that depends on its inputs")
        self._bit = {node_id: k for k, node_id in enumerate(self.nodes)}
        self.producer = {t: self._bit[i] for t, i in producer.items() if i in self._bit}

        # per tensor: bitset of consuming (non-constant) nodes
        self.consumers: dict[str, int] = {}
        for k, node_id in enumerate(self.nodes):
            for name in node_inputs[node_id]:
                if name not in const_names:
                    self.consumers[name] = self.consumers.get(name, 0) | (1 << k)
        # ancestors (inclusive) of each node, as bitsets
        self.anc: list[int] = []
        for k, node_id in enumerate(self.nodes):
            mask = 1 << k
            for name in node_inputs[node_id]:
                p = self.producer.get(name)
                if p is not None:
                    mask |= self.anc[p]
            self.anc.append(mask)
        self.full = (1 << self.n) - 1
        self._info = self._tensor_infos()

    # -- tensors ---------------------------------------------------------------------------
    def _tensor_infos(self) -> dict[str, TensorInfo]:
        g = self.model.graph
        infos: dict[str, TensorInfo] = {}
        for vi in [*g.input, *g.value_info, *g.output]:
            tt = vi.type.tensor_type
            if not tt.elem_type or not tt.HasField("shape"):
                continue
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
            if all(d >= 0 for d in dims):
                infos[vi.name] = TensorInfo(vi.name, _np_dtype(tt.elem_type), tuple(dims))
        for init in g.initializer:
            infos[init.name] = TensorInfo(init.name, _np_dtype(init.data_type), tuple(init.dims))
        missing = [t for t in self.variable_tensors() if t not in infos]
        if missing:
            infos.update(self._probe_shapes(missing))
        return infos

    def _probe_shapes(self, names: list[str]) -> dict[str, TensorInfo]:
        """Shapes ONNX shape inference could not give, from one ONNX Runtime run on random input."""
        import onnx

        if self.model_path is None:
            raise SplitpipeError(f"cannot determine the shapes of {len(names)} tensors, e.g. {names[0]!r}")
        _LOGGER.info(
            "shape inference left %d tensors without static shapes; probing with onnxruntime", len(names)
        )
        probe = onnx.ModelProto()
        probe.CopyFrom(self.model)
        for name in names:
            probe.graph.output.add(name=name)
        tmp = self.model_path.with_name("shape_probe.onnx")
        onnx.save_model(probe, str(tmp))
        try:
            from splitpipe.devices.runtimes.ort import OrtRunner

            with OrtRunner(tmp, threads=None, optimization="disable") as runner:
                values = runner.infer(random_feed(runner.inputs))
        finally:
            tmp.unlink(missing_ok=True)
        return {n: TensorInfo(n, values[n].dtype, tuple(values[n].shape)) for n in names}

    def info(self, name: str) -> TensorInfo:
        return self._info[name]

    def variable_tensors(self) -> Iterator[str]:
        """Every tensor that depends on the inputs: graph inputs and outputs of non-constant nodes."""
        yield from self.inputs
        for node_id in self.nodes:
            for out in self.all_nodes[node_id].output:
                if out:
                    yield out

    # -- bitsets ---------------------------------------------------------------------------
    def members(self, mask: int) -> Iterator[int]:
        """Bit positions set in ``mask``."""
        bits = bin(mask)[:1:-1]  # least significant bit first; one C-level pass over the int
        k = bits.find("1")
        while k >= 0:
            yield k
            k = bits.find("1", k + 1)

    def node(self, k: int) -> onnx.NodeProto:
        return self.all_nodes[self.nodes[k]]

    def label(self, k: int) -> str:
        node = self.node(k)
        for p in node.metadata_props:
            if p.key == "label" and p.value:
                return p.value
        return node.name or f"{node.op_type}_{k}"

    def crossing(self, head: int) -> list[str]:
        """Tensors produced in ``head`` (or graph inputs) that the rest of the graph needs, in a stable order."""
        rest = self.full & ~head
        out: list[str] = []
        outputs = set(self.outputs)
        for name in self.inputs:
            if self.consumers.get(name, 0) & rest or (name in outputs and head != self.full):
                out.append(name)
        for k in self.members(head):
            for name in self.node(k).output:
                if name and (self.consumers.get(name, 0) & rest or name in outputs):
                    out.append(name)
        return out

    def closure(self, tensors: Iterable[str]) -> int:
        """The smallest head that computes ``tensors``: all their producers' ancestors."""
        mask = 0
        for t in tensors:
            p = self.producer.get(t)
            if p is not None:
                mask |= self.anc[p]
        return mask

    def needed_constant_nodes(self, nodes: Iterable[int]) -> list[int]:
        """Constant nodes (positions in all_nodes) whose results the given nodes read, transitively."""
        want: set[str] = set()
        for node_id in nodes:
            want.update(n for n in self.node_inputs[node_id] if n in self.constants)
        chosen: list[int] = []
        for node_id in reversed(self.const_node_ids):
            if any(o in want for o in self.all_nodes[node_id].output):
                chosen.append(node_id)
                want.update(self.node_inputs[node_id])
        return sorted(chosen)


def random_feed(specs: Iterable[Any], seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for runner TensorSpecs or TensorInfos: normal floats, small non-negative integers."""
    rng = np.random.default_rng(seed)
    feed: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = tuple(1 if d is None else d for d in spec.shape)
        if np.issubdtype(spec.dtype, np.floating):
            feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype == np.bool_:
            feed[spec.name] = rng.integers(0, 2, shape).astype(np.bool_)
        else:
            feed[spec.name] = rng.integers(0, 10, shape).astype(spec.dtype)
    return feed
