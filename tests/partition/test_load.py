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


def test_a_plan_or_a_state_dict_given_as_the_model_says_where_it_goes() -> None:
    with pytest.raises(SplitpipeError, match=r"a plan JSON is given with --from to plan, --plan to export"):
        parse_spec("plan.json")
    with pytest.raises(SplitpipeError, match=r"a saved state_dict is given with --weights FILE"):
        parse_spec("resnet.pth")


def test_parse_shape() -> None:
    assert parse_shape("1,3,224,224") == (1, 3, 224, 224)
    for bad in ["", "1,a", "1,0,3", "-1,3", "1,3,²"]:
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


def test_an_onnx_file_with_retrained_external_weights_is_not_served_from_the_cache(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    def save(weight: float) -> Path:
        w = numpy_helper.from_array(np.full((1, 256), weight, np.float32), "w")
        graph = helper.make_graph(
            [helper.make_node("Add", ["x", "w"], ["a"]), helper.make_node("Relu", ["a"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])],
            initializer=[w],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
        path = tmp_path / "m.onnx"
        (tmp_path / "m.data").unlink(missing_ok=True)  # onnx appends to an existing data file
        onnx.save_model(model, str(path), save_as_external_data=True, location="m.data", size_threshold=0)
        return path

    def run(path: Path) -> float:
        y = ort.InferenceSession(str(path)).run(None, {"x": np.zeros((1, 256), np.float32)})[0]
        return float(y[0, 0])

    first = load_model(str(save(1.0)))
    before = (tmp_path / "m.onnx").read_bytes()
    again = load_model(str(save(2.0)))  # the weights changed; the .onnx file did not
    assert (tmp_path / "m.onnx").read_bytes() == before
    assert again.path != first.path
    assert run(first.path) == 1.0 and run(again.path) == 2.0


def test_a_changed_model_under_the_same_spec_is_exported_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    source = tmp_path / "evolving_model.py"
    header = "import torch\nfrom torch import nn\n\n\n"

    def load(body: str) -> Path:
        source.write_text(header + body)
        sys.modules.pop("evolving_model", None)  # a new process imports the file anew
        return load_model("evolving_model:build", (1, 3, 8, 8)).path

    two_layers = "def build():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())\n"
    first = load(two_layers)
    assert load(two_layers) == first  # the same code builds the same model: cached
    # a layer added
    assert (
        load("def build():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1))\n")
        != first
    )
    # the same layers, another forward
    net = (
        "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.conv = nn.Conv2d(3, 4, 3)\n\n    def forward(self, x):\n        return {}\n\n\n"
        "def build():\n    return Net()\n"
    )
    plain = load(net.format("self.conv(x)"))
    assert load(net.format("torch.relu(self.conv(x))")) not in (plain, first)
    # the checkpoint the factory loads was retrained
    ckpt = tmp_path / "ckpt.pt"
    loads = f"def build():\n    m = nn.Conv2d(3, 4, 3)\n    m.load_state_dict(torch.load({str(ckpt)!r}))\n    return m\n"
    torch.save(torch.nn.Conv2d(3, 4, 3).state_dict(), ckpt)
    before = load(loads)
    torch.save(torch.nn.Conv2d(3, 4, 3).state_dict(), ckpt)
    assert load(loads) != before


def test_an_onnx_file_onnx_runtime_cannot_load_is_named_and_not_cached(tmp_path: Path) -> None:
    # ONNX's checker passes an op of a domain it does not know; ONNX Runtime has no such op
    import json

    import onnx
    from onnx import TensorProto, helper

    from splitpipe._env import cache_dir

    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["y"], domain="com.example")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    path = tmp_path / "custom.onnx"
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    for _ in range(2):  # and again: the broken model was not cached
        with pytest.raises(SplitpipeError, match=rf"ONNX Runtime cannot load {path}: .*NoSuchOp") as err:
            load_model(str(path))
        assert "\n" not in str(err.value) and str(cache_dir()) not in str(err.value)
    cached = [json.loads(m.read_text()).get("spec") for m in (cache_dir() / "models").glob("*/meta.json")]
    assert str(path) not in cached
