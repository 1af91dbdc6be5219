"""Cut discovery on hand-built graphs whose cuts are known, and on real models' structure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from splitpipe.errors import SplitpipeError
from splitpipe.partition.cuts import find_cuts, is_chain
from splitpipe.partition.export import export_split
from splitpipe.partition.plan import PlanRequest
from tests.partition import graphs


def cut_sets(model: onnx.ModelProto, tmp_path: Path, k: int = 1) -> list[tuple[str, ...]]:
    return [c.tensors for c in find_cuts(graphs.graph_of(model, tmp_path), k)]


def test_chain_cuts_between_every_node(tmp_path: Path) -> None:
    assert cut_sets(graphs.chain(), tmp_path) == [("a",), ("b",)]


def test_residual_block_is_cut_only_around_it(tmp_path: Path) -> None:
    assert cut_sets(graphs.residual(), tmp_path) == [("a",), ("d",)]
    # inside the block the skip tensor a crosses too
    assert cut_sets(graphs.residual(), tmp_path, 2) == [("a",), ("a", "b"), ("a", "c"), ("d",)]


def test_parallel_branches_and_constants(tmp_path: Path) -> None:
    assert cut_sets(graphs.branches(), tmp_path) == [("a",), ("c",)]
    three = cut_sets(graphs.branches(), tmp_path, 3)
    assert ("b1", "b2", "b3") in three  # all three branches computed on the device
    assert not any("w2" in c or "w" in c for c in three)  # weights and constants never cross


def test_output_computed_in_the_head_crosses(tmp_path: Path) -> None:
    assert cut_sets(graphs.two_outputs(), tmp_path) == [("a",), ("y1",)]


def test_input_used_late_crosses_every_cut(tmp_path: Path) -> None:
    assert cut_sets(graphs.late_input(), tmp_path) == []
    assert cut_sets(graphs.late_input(), tmp_path, 2) == [("z", "a"), ("z", "b")]  # graph inputs first


def test_dead_nodes_are_dropped(tmp_path: Path) -> None:
    g = graphs.graph_of(graphs.dead_branch(), tmp_path)
    assert g.n == 2
    assert [c.tensors for c in find_cuts(g)] == [("a",)]


def test_max_cut_tensors_is_checked(tmp_path: Path) -> None:
    g = graphs.graph_of(graphs.chain(), tmp_path)
    with pytest.raises(SplitpipeError, match="between 1 and"):
        find_cuts(g, 0)


def test_cuts_are_ordered_and_nested(tmp_path: Path) -> None:
    cuts = find_cuts(graphs.graph_of(graphs.residual(), tmp_path), 2)
    assert [c.id for c in cuts] == list(range(len(cuts)))
    sizes = [c.head_nodes for c in cuts]
    assert sizes == sorted(sizes)
    assert is_chain(find_cuts(graphs.graph_of(graphs.residual(), tmp_path)))


@pytest.mark.parametrize(
    ("build", "k"),
    [
        (graphs.chain, 1),
        (graphs.residual, 2),
        (graphs.branches, 3),
        (graphs.two_outputs, 1),
        (graphs.late_input, 2),
    ],
)
def test_every_cut_of_hand_built_graphs_exports_exactly(build, k: int, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "m.onnx"
    onnx.save_model(build(), str(path))
    req = PlanRequest(model=str(path), device="rpi4", server="x86-server", max_cut_tensors=k)
    (tmp_path / "g").mkdir()
    cuts = find_cuts(graphs.graph_of(onnx.load(str(path)), tmp_path / "g"), k)
    assert cuts
    for cut in cuts:
        result = export_split(req, cut.id, tmp_path / f"split{cut.id}")
        assert result.max_rel == pytest.approx(0.0, abs=1e-6)
        names = [t["name"] for t in result.manifest["cut"]]
        assert len(names) == len(cut.tensors)
        assert np.all(
            [
                n.endswith(".cut") == (t in ("x", "z", "y1", "y2"))
                for n, t in zip(names, cut.tensors, strict=True)
            ]
        )


def test_cuts_inside_one_module_get_labels_apart() -> None:
    from splitpipe.partition.plan import PlanRequest, analyse

    a = analyse(
        PlanRequest(
            model="tests.fixtures.models:stepped", input_shape=(1, 3, 16, 16), profile_mode="analytic"
        )
    )
    labels = [c.label for c in a.cuts]
    assert len(set(labels)) == len(labels), labels
    inside = [c for c in a.cuts if c.label.startswith("steps")]
    assert len(inside) == 3
    for c in inside:  # the module's name, then the tensor that crosses
        assert c.label == f"steps [{c.tensors[0]}]"
    assert "conv" in labels
