"""Model specs, shapes, weights and the ONNX cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from splitpipe.errors import SplitpipeError
from splitpipe.partition.load import load_model, parse_shape, parse_spec

SMALL = (1, 3, 32, 32)


def test_parse_spec_kinds() -> None:
    assert parse_spec("torchvision:resnet50").kind == "torchvision"
    assert parse_spec("pkg.mod:build").kind == "callable"
    assert parse_spec("models/yolo.onnx").kind == "onnx"
    for bad in ["", "resnet50", "torchvision:", "a b:c"]:
        with pytest.raises(SplitpipeError, match="accepted"):
            parse_spec(bad)


def test_parse_shape() -> None:
    assert parse_shape("1,3,224,224") == (1, 3, 224, 224)
    for bad in ["", "1,a", "1,0,3", "-1,3"]:
        with pytest.raises(SplitpipeError, match="positive integers"):
            parse_shape(bad)


def test_unknown_torchvision_model_lists_the_accepted_ones() -> None:
    with pytest.raises(SplitpipeError, match=r"unknown torchvision model 'resnet51'; accepted: .*resnet50"):
        load_model("torchvision:resnet51")


def test_callable_is_exported_once_and_cached() -> None:
    first = load_model("tests.fixtures.models:tiny_net", SMALL)
    stamp = first.path.stat().st_mtime_ns
    again = load_model("tests.fixtures.models:tiny_net", SMALL)
    assert again.path == first.path and again.path.stat().st_mtime_ns == stamp
    assert again.input_shapes == {"x": SMALL}
    assert (first.path.parent / "model.onnx.data").is_file()  # weights kept apart, shared by the halves


def test_callable_errors() -> None:
    with pytest.raises(SplitpipeError, match="cannot import"):
        load_model("no_such_module_xyz:build", SMALL)
    with pytest.raises(SplitpipeError, match="has no callable"):
        load_model("tests.fixtures.models:missing", SMALL)
    with pytest.raises(
        SplitpipeError,
        match=r"importing 'tests.fixtures.broken_model_module'.* failed: "
        r"RuntimeError: config file models.yaml is missing",
    ):
        load_model("tests.fixtures.broken_model_module:build", SMALL)
    with pytest.raises(
        SplitpipeError, match=r"needs_arguments\(\) failed: TypeError: .*called with no arguments"
    ):
        load_model("tests.fixtures.models:needs_arguments", SMALL)


def test_a_model_torch_cannot_export_is_a_user_error(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(
        SplitpipeError, match=r"torch.onnx.export cannot export this model: \w+: .*data-dependent"
    ) as info:
        load_model("tests.fixtures.models:data_dependent", SMALL)
    assert "\x1b[" not in str(info.value) and "\n" not in str(info.value)
    printed = capfd.readouterr()
    assert "def forward" not in printed.out + printed.err  # the exporter's graph dumps are not shown


def test_wrong_input_shape_is_a_user_error() -> None:
    with pytest.raises(SplitpipeError, match=r"does not accept input shape \[1, 5, 32, 32\]"):
        load_model("tests.fixtures.models:tiny_net", (1, 5, 32, 32))


def test_weights_are_loaded(tmp_path: Path) -> None:
    from tests.fixtures.models import tiny_net

    net = tiny_net()
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(0.01)
    weights = tmp_path / "w.pt"
    torch.save(net.state_dict(), weights)
    plain = load_model("tests.fixtures.models:tiny_net", SMALL)
    loaded = load_model("tests.fixtures.models:tiny_net", SMALL, weights=weights)
    assert loaded.path != plain.path  # different weights, different cache entry

    bad = tmp_path / "bad.pt"
    torch.save({"nonsense.weight": torch.zeros(1)}, bad)
    with pytest.raises(
        SplitpipeError, match=r"does not fit the model: missing .* and \d+ more; unexpected nonsense.weight"
    ):
        load_model("tests.fixtures.models:tiny_net", SMALL, weights=bad)
    state = net.state_dict()
    state["stem.0.weight"] = torch.zeros(1, 1)
    torch.save(state, bad)
    with pytest.raises(SplitpipeError, match=r"does not fit the model: other shapes for stem.0.weight$"):
        load_model("tests.fixtures.models:tiny_net", SMALL, weights=bad)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(SplitpipeError, match="not a readable state_dict"):
        load_model("tests.fixtures.models:tiny_net", SMALL, weights=garbage)
    pickled = tmp_path / "pickled.pt"
    torch.save({"where": Path("x")}, pickled)  # a global weights_only loading refuses
    with pytest.raises(SplitpipeError, match=r"not a readable state_dict \(UnpicklingError: ") as info:
        load_model("tests.fixtures.models:tiny_net", SMALL, weights=pickled)
    assert "\n" not in str(info.value)
    with pytest.raises(SplitpipeError, match="weights file not found"):
        load_model("tests.fixtures.models:tiny_net", SMALL, weights=tmp_path / "none.pt")


def test_onnx_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SplitpipeError, match="ONNX file not found"):
        load_model(str(tmp_path / "missing.onnx"))
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage that is not a model")
    with pytest.raises(SplitpipeError, match="is not a valid ONNX model"):
        load_model(str(corrupt))


def test_onnx_file_with_free_dimension_needs_input_shape(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["a"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    path = tmp_path / "free.onnx"
    onnx.save_model(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), str(path)
    )
    with pytest.raises(SplitpipeError, match="give --input-shape"):
        load_model(str(path))
    with pytest.raises(SplitpipeError, match="does not fit input 'x'"):
        load_model(str(path), (1, 5))
    loaded = load_model(str(path), (2, 4))
    assert loaded.input_shapes == {"x": (2, 4)}
