"""Runner registry, TorchRunner (real torch), TrtRunner (unavailable here; the trt test needs a GPU)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from splitpipe.devices.microbench import POINTS, SHORT
from splitpipe.devices.runtimes import TensorSpec, available_runners, create_runner, runner_names
from splitpipe.devices.runtimes.ort import OrtRunner
from splitpipe.errors import SplitpipeError, UnavailableError

MODELS = resources.files("splitpipe.devices") / "microbench_models"
CONV = next(p for p in POINTS if p.name == "conv3x3_c32_h28")


def test_registry_lists_every_backend_with_reasons() -> None:
    found = available_runners()
    assert list(found) == runner_names() == ["ort", "trt", "torch"]
    assert found["ort"] is None
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert found["trt"] is not None and "tensorrt" in found["trt"]
        with pytest.raises(UnavailableError, match="runtime 'trt' is unavailable: tensorrt"):
            create_runner("trt", b"engine")
    with pytest.raises(SplitpipeError, match="unknown runtime 'tflite'; accepted: ort, trt, torch"):
        create_runner("tflite", "m.tflite")


def test_trt_module_imports_without_tensorrt() -> None:
    """The module itself is importable anywhere; only probing needs tensorrt."""
    from splitpipe.devices.runtimes import trt

    reason = trt.unavailable_reason()
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert reason is not None and "tensorrt cannot be imported" in reason
    with pytest.raises(SplitpipeError, match="unknown CUDA buffer backend"):
        trt.pick_backend("opencl")


try:
    import torch
except ImportError:  # a device install: the reference runner's tests skip
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed")


def small_model() -> torch.nn.Module:
    class Small(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = torch.relu(self.conv(image))
            return y, y.mean(dim=(2, 3))

    return Small()


def _image() -> np.ndarray:
    return np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)


@needs_torch
def test_torch_runner_module() -> None:
    torch.manual_seed(0)
    model = small_model()
    with create_runner(
        "torch", model, inputs={"image": (1, 3, 8, 8)}, output_names=["map", "pooled"]
    ) as runner:
        assert [s.name for s in runner.outputs] == ["map", "pooled"]  # learned by the dry run
        out = runner.infer({"image": _image()})
        with torch.inference_mode():
            want = model(torch.from_numpy(_image()))
        np.testing.assert_allclose(out["map"], want[0].numpy(), rtol=1e-6)
        np.testing.assert_allclose(out["pooled"], want[1].numpy(), rtol=1e-6)
        with pytest.raises(SplitpipeError, match="dtype float64, expected float32"):
            runner.infer({"image": _image().astype(np.float64)})
        with pytest.raises(SplitpipeError, match=r"shape \(1, 3, 4, 4\), expected \(1, 3, 8, 8\)"):
            runner.infer({"image": _image()[:, :, :4, :4]})
        with pytest.raises(SplitpipeError, match="missing"):
            runner.infer({})


@needs_torch
def test_torch_runner_needs_input_specs_for_a_module() -> None:
    with pytest.raises(SplitpipeError, match=r"needs inputs=.*forward takes \['image'\]"):
        create_runner("torch", small_model()).activate()


@needs_torch
def test_torch_runner_torchscript_and_exported_files(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = small_model().eval()
    with torch.inference_mode():
        want = model(torch.from_numpy(_image()))[0].numpy()
    script = tmp_path / "small.ts"
    torch.jit.save(torch.jit.trace(model, torch.from_numpy(_image())), str(script))
    spec = [TensorSpec("image", np.dtype(np.float32), (1, 3, None, None))]
    with create_runner("torch", script, inputs=spec) as runner:
        assert runner.outputs == []  # free dimensions: outputs known after the first run
        out = runner.infer({"image": _image()})
        np.testing.assert_allclose(out["output_0"], want, rtol=1e-5)
        assert [s.name for s in runner.outputs] == ["output_0", "output_1"]
    exported = tmp_path / "small.pt2"
    torch.export.save(torch.export.export(model, (torch.from_numpy(_image()),)), str(exported))
    with create_runner("torch", exported) as runner:  # an ExportedProgram carries its input specs
        assert [(s.name, s.shape) for s in runner.inputs] == [("image", (1, 3, 8, 8))]
        np.testing.assert_allclose(runner.infer({"image": _image()})["output_0"], want, rtol=1e-5)


@needs_torch
def test_torch_runner_bad_files(tmp_path: Path) -> None:
    with pytest.raises(SplitpipeError, match="torch model file not found"):
        create_runner("torch", tmp_path / "none.pt", inputs={"x": (1,)}).activate()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(SplitpipeError, match="not a TorchScript file"):
        create_runner("torch", junk, inputs={"x": (1,)}).activate()


@needs_torch
def test_torch_and_ort_agree_on_a_conv() -> None:
    """The reference runner and ONNX Runtime compute the same conv (a microbench model)."""
    c, k = CONV.dims[0], CONV.kernel
    conv = torch.nn.Conv2d(c, c, k, padding=k // 2)
    with torch.no_grad():
        conv.weight.fill_(1.0 / (c * k * k))
        conv.bias.fill_(1e-3)
    x = np.random.default_rng(2).random(CONV.input_shape, dtype=np.float32)
    with OrtRunner((MODELS / CONV.file(SHORT)).read_bytes()) as ort_runner:
        ort_out = ort_runner.infer({"x": x})["y"]
    with create_runner("torch", conv, inputs={"x": CONV.input_shape}) as torch_runner:
        torch_out = torch_runner.infer({"x": x})["output"]
    np.testing.assert_allclose(ort_out, torch_out, rtol=1e-4, atol=1e-5)


@pytest.mark.trt
def test_trt_runner_matches_ort(tmp_path: Path) -> None:
    """On a machine with TensorRT 10 and a GPU: build an engine and compare with ONNX Runtime."""
    from splitpipe.devices.runtimes.trt import engine_from_onnx

    onnx_bytes = (MODELS / CONV.file(SHORT)).read_bytes()
    engine = tmp_path / "conv.engine"
    engine.write_bytes(engine_from_onnx(onnx_bytes))
    x = np.random.default_rng(3).random(CONV.input_shape, dtype=np.float32)
    with OrtRunner(onnx_bytes) as ort_runner:
        want = ort_runner.infer({"x": x})["y"]
    with create_runner("trt", engine) as runner:
        assert [s.name for s in runner.inputs] == ["x"]
        got = runner.infer({"x": x})["y"]
        again = runner.infer({"x": x})["y"]  # buffers are reused
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(got, again)
