"""Cut discovery on any DAG: every way to split a model into head and tail with few crossing tensors.

A cut is a head H, a set of nodes closed under ancestors; the tensors crossing it are those
produced in H (or graph inputs) that nodes outside H read, plus graph outputs computed in H.
For a crossing set S the head is determined: every live node of H must reach an output through
S, so H is exactly the ancestor closure of S's producers. With one crossing tensor t, H is the
ancestor closure of t's producer, so trying the closure of every node finds every single-tensor
cut: the search is exact for the default ``max_tensors=1``. For more crossing tensors it also
tries every prefix of the topological order and the union of every two closures that do not
contain each other (tensors from parallel branches), bounded by ``MAX_PAIRS``. Heads with the
same crossing set are merged. No per-model rules and no names are involved: chains, residual
blocks, concatenations, multi-branch modules, transformers and multi-output detectors are all
just graphs.
"""

from __future__ import annotations

from dataclasses import dataclass

from splitpipe.errors import SplitpipeError
from splitpipe.partition.graph import Graph

MAX_CUT_TENSORS = 4
#: most unions of two closures tried when max_tensors > 1 (wide graphs have many)
MAX_PAIRS = 20000


@dataclass(frozen=True)
class Cut:
    """One split point: ``head`` is a bitset over ``Graph.nodes``; ``tensors`` cross from head to tail."""

    id: int
    head: int
    tensors: tuple[str, ...]
    label: str

    @property
    def head_nodes(self) -> int:
        return self.head.bit_count()


def find_cuts(graph: Graph, max_tensors: int = 1) -> list[Cut]:
    """All distinct cuts with 1..max_tensors crossing tensors, ordered from the input to the output."""
    if not 1 <= max_tensors <= MAX_CUT_TENSORS:
        raise SplitpipeError(f"--max-cut-tensors must be between 1 and {MAX_CUT_TENSORS}, got {max_tensors}")
    heads: set[int] = set(graph.anc)
    if max_tensors > 1:
        heads.update((1 << (i + 1)) - 1 for i in range(graph.n))
    heads.discard(0)
    heads.discard(graph.full)

    inputs = set(graph.inputs)
    best: dict[frozenset[str], int] = {}

    def consider(head: int) -> bool:
        tensors = graph.crossing(head)
        if len(tensors) > max_tensors or set(tensors) <= inputs:
            return False
        key = frozenset(tensors)
        known = best.get(key)
        if known is None or head.bit_count() < known.bit_count():
            canonical = graph.closure(tensors)
            if canonical and canonical != head and set(graph.crossing(canonical)) == key:
                head = canonical
            best[key] = head
        return True

    small = [h for h in sorted(heads) if consider(h) and h in graph.anc]
    if max_tensors > 1:
        tried = 0
        for i, a in enumerate(small):
            for b in small[i + 1 :]:
                union = a | b
                if union in (a, b) or union in heads or union == graph.full:
                    continue  # nested closures, or a head already tried
                heads.add(union)
                consider(union)
                tried += 1
                if tried >= MAX_PAIRS:
                    break
            if tried >= MAX_PAIRS:
                break

    ordered = sorted(best.items(), key=lambda kv: (kv[1].bit_count(), kv[1].bit_length()))
    crossing = [tuple(graph.crossing(head)) for _key, head in ordered]
    labels = [_label(graph, tensors) for tensors in crossing]
    repeated = {label for label in labels if labels.count(label) > 1}
    return [
        # several cuts inside one module (a transformer layer's residual adds) share its label:
        # the crossing tensors tell them apart
        Cut(
            id=idx,
            head=head,
            tensors=tensors,
            label=f"{label} [{', '.join(tensors)}]" if label in repeated else label,
        )
        for idx, ((_key, head), tensors, label) in enumerate(zip(ordered, crossing, labels, strict=True))
    ]


def _label(graph: Graph, tensors: tuple[str, ...]) -> str:
    labels = []
    for t in tensors:
        k = graph.producer.get(t)
        text = "input" if k is None else graph.label(k)
        if text not in labels:
            labels.append(text)
    return " + ".join(labels)


def is_chain(cuts: list[Cut]) -> list[bool]:
    """For each cut, whether its head contains the previous cut's head (segments can then be timed once)."""
    out = []
    prev = 0
    for cut in cuts:
        out.append(cut.head & prev == prev)
        prev = cut.head
    return out
