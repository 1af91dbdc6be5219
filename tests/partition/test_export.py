"""Export: files, manifest, verification, batch dimension, and never clobbering a folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from splitpipe._files import sha256_file as sha256
from splitpipe.errors import SplitpipeError
from splitpipe.partition.export import export_split
from splitpipe.partition.plan import PlanRequest, make_plan

REQ = PlanRequest(
    model="tests.fixtures.models:two_heads", input_shape=(1, 3, 32, 32), device="rpi4", server="gpu-server"
)


def test_export_writes_verified_halves(tmp_path: Path) -> None:
    out = tmp_path / "split"
    result = export_split(REQ, 3, out)
    m = json.loads((out / "manifest.json").read_text())
    assert m == result.manifest
    assert m["format"] == "splitpipe-export" and m["version"] == 1
    assert m["split"] == {"id": 3, "label": "trunk.3"}
    assert m["name"] == "two_heads-s3"
    for part in ("head", "tail"):
        f = m["files"][part]
        assert sha256(out / f["path"]) == f["sha256"] and (out / f["path"]).stat().st_size == f["bytes"]
    assert [o["name"] for o in m["outputs"]] == [
        "linear",
        "sigmoid",
    ]  # both outputs of the detector-like model
    assert m["verification"]["max_rel"] <= 1e-4 and m["verification"]["samples"] == 2
    assert m["predictions"]["device"] == "rpi4" and m["predictions"]["estimated"]["head_ms"] is True
    assert m["onnx"]["opset"] == 18

    # run the halves by hand: tail(head(x)) == model(x)
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    head = ort.InferenceSession(str(out / "head.onnx"))
    tail = ort.InferenceSession(str(out / "tail.onnx"))
    cut = head.run(None, {"x": x})
    assert [i.name for i in tail.get_inputs()] == [c["name"] for c in m["cut"]]
    got = tail.run(None, dict(zip([c["name"] for c in m["cut"]], cut, strict=True)))
    import torch

    from tests.fixtures.models import two_heads

    with torch.no_grad():
        want = two_heads()(torch.from_numpy(x))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-5)


def test_tail_gets_a_free_batch_dimension_when_it_computes_batches_exactly(tmp_path: Path) -> None:
    m = export_split(REQ, 3, tmp_path / "split").manifest
    assert m["cut"][0]["shape"][0] is None
    tail = ort.InferenceSession(str(tmp_path / "split" / "tail.onnx"))
    batch = np.random.default_rng(0).standard_normal((4, 16, 8, 8)).astype(np.float32)
    together = tail.run(None, {m["cut"][0]["name"]: batch})
    for i in range(4):
        alone = tail.run(None, {m["cut"][0]["name"]: batch[i : i + 1]})
        for t, a in zip(together, alone, strict=True):
            np.testing.assert_allclose(t[i : i + 1], a, rtol=1e-5, atol=1e-6)


def test_export_uses_the_plan_predictions(tmp_path: Path) -> None:
    plan = make_plan(REQ)
    m = export_split(REQ, 2, tmp_path / "s", plan=plan).manifest
    assert m["predictions"]["e2e_ms"] == pytest.approx(plan.candidate(2).e2e_ms)


def test_another_codec_than_the_plans_is_predicted_for_that_codec(tmp_path: Path) -> None:
    from dataclasses import replace

    plan = make_plan(REQ)  # codec raw
    m = export_split(REQ, 2, tmp_path / "s", plan=plan, codec="int8").manifest
    got, raw = m["predictions"], plan.candidate(2)
    assert m["codec"]["name"] == got["codec"] == "int8"
    # the same figures a plan made with int8 predicts for the split (same calibration inputs)
    want = make_plan(replace(REQ, codec="int8")).candidate(2)
    assert got["tx_bytes"] == want.tx_bytes < raw.tx_bytes / 3
    assert got["e2e_ms"] < raw.e2e_ms and got["codec_error"] == pytest.approx(want.codec_error)
    assert got["head_ms"] == raw.head_ms and got["tail_ms"] == raw.tail_ms


def test_unknown_split_id(tmp_path: Path) -> None:
    with pytest.raises(SplitpipeError, match=r"unknown split id 99; accepted: 0, 1, 2, 3"):
        export_split(REQ, 99, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_never_overwrites_a_folder_that_is_not_an_export(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(SplitpipeError, match="not a splitpipe export directory"):
        export_split(REQ, 1, precious)
    assert (precious / "thesis.tex").read_text() == "years of work"
    # an earlier export is replaced
    export_split(REQ, 1, tmp_path / "again")
    export_split(REQ, 2, tmp_path / "again")
    assert json.loads((tmp_path / "again" / "manifest.json").read_text())["split"]["id"] == 2


def test_exporting_again_keeps_files_no_export_wrote(tmp_path: Path) -> None:
    out = tmp_path / "split"
    export_split(REQ, 3, out)
    export_split(REQ, 2, out)  # an export is replaced
    (out / "notes.txt").write_text("mine")
    (out / "extra").mkdir()
    with pytest.raises(SplitpipeError, match=r"holds extra, notes.txt, which no export wrote"):
        export_split(REQ, 3, out)
    assert (out / "notes.txt").read_text() == "mine" and (out / "extra").is_dir()
    assert json.loads((out / "manifest.json").read_text())["split"]["id"] == 2


def test_failed_verification_leaves_nothing(tmp_path: Path) -> None:
    # a negative tolerance cannot be met: the export must fail and write nothing
    with pytest.raises(SplitpipeError, match="above the tolerance"):
        export_split(REQ, 1, tmp_path / "s", tolerance=-1.0)
    assert not (tmp_path / "s").exists()
    assert not list(tmp_path.iterdir())


def test_baselines_export_as_splits(tmp_path: Path) -> None:
    x = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
    whole = ort.InferenceSession(str(export_split(REQ, "local", tmp_path / "local").out / "head.onnx"))
    local = json.loads((tmp_path / "local" / "manifest.json").read_text())
    assert local["cut"] == [] and list(local["files"]) == ["head"] and local["split"]["id"] == "local"
    assert local["name"] == "two_heads-local" and local["codec"]["name"] == "raw"
    with pytest.raises(SplitpipeError, match="the local export sends nothing to encode"):
        export_split(REQ, "local", tmp_path / "local-int8", codec="int8")
    assert not (tmp_path / "local-int8").exists()
    offload = export_split(REQ, "offload", tmp_path / "offload").manifest
    assert [t["name"] for t in offload["cut"]] == ["x.cut"]  # the input itself crosses
    head = ort.InferenceSession(str(tmp_path / "offload" / "head.onnx"))
    tail = ort.InferenceSession(str(tmp_path / "offload" / "tail.onnx"))
    sent = head.run(None, {"x": x})[0]
    np.testing.assert_array_equal(sent, x)
    for a, b in zip(tail.run(None, {"x.cut": sent}), whole.run(None, {"x": x}), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    with pytest.raises(SplitpipeError, match="accepted: 0, 1, 2, 3, local, offload"):
        export_split(REQ, "remote", tmp_path / "x")


def test_a_name_the_server_would_refuse_is_refused_at_export(tmp_path: Path) -> None:
    with pytest.raises(
        SplitpipeError, match=r"--name 'a b/c': a served model's name must be 1-128 of letters"
    ):
        export_split(REQ, 1, tmp_path / "x", name="a b/c")
    assert not (tmp_path / "x").exists()


def test_a_plan_made_before_the_model_changed_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import helper

    from tests.partition.graphs import build, chain

    model = tmp_path / "m.onnx"
    onnx.save_model(chain(), str(model))  # x -> Relu a -> Sigmoid b -> Tanh y
    req = PlanRequest(model=str(model), profile_mode="analytic")
    plan = make_plan(req)
    assert [t["name"] for t in plan.option(1).tensors] == ["b"]
    # the same inputs and outputs, one more layer: split 1 is another tensor now
    longer = build(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("Exp", ["a"], ["e"]),
            helper.make_node("Sigmoid", ["e"], ["b"]),
            helper.make_node("Tanh", ["b"], ["y"]),
        ],
        {"x": [1, 4]},
        ["y"],
    )
    onnx.save_model(longer, str(model))
    with pytest.raises(
        SplitpipeError, match=r"the plan does not fit .*split 1 sends b \[1, 4\], the model now e"
    ):
        export_split(req, 1, tmp_path / "out", plan=plan)
    assert not (tmp_path / "out").exists()
    export_split(req, 1, tmp_path / "out", plan=make_plan(req))  # planned again, it exports


def test_an_unwritable_place_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SplitpipeError, match="cannot write the export to /proc/splitpipe-test/split"):
        export_split(REQ, 1, Path("/proc/splitpipe-test/split"))


def test_replacing_an_export_leaves_no_temporary_folders(tmp_path: Path) -> None:
    out = tmp_path / "split"
    export_split(REQ, 1, out)
    export_split(REQ, 2, out)
    assert [p.name for p in tmp_path.iterdir()] == ["split"]
    assert json.loads((out / "manifest.json").read_text())["split"]["id"] == 2


def test_codec_times_measured_here_are_not_the_devices(tmp_path: Path) -> None:
    """A plan with the device's own times (--device-from): another codec at export is timed on
    this machine, which is not the device, so its encode time is an estimate there."""
    from dataclasses import replace

    device_plan = tmp_path / "device.json"
    here = PlanRequest(model=REQ.model, input_shape=REQ.input_shape, profile_mode="analytic")
    make_plan(here).write(device_plan)
    req = replace(here, device_from=str(device_plan), server="gpu-server")
    m = export_split(req, 2, tmp_path / "s", plan=make_plan(req), codec="int8").manifest
    assert m["predictions"]["codec"] == "int8"
    assert m["predictions"]["estimated"]["encode_ms"] is True
    assert m["predictions"]["estimated"]["decode_ms"] is True


def test_exporting_into_a_learned_bottlenecks_folder_keeps_its_student(tmp_path: Path) -> None:
    out = tmp_path / "bf"
    export_split(REQ, 1, out)
    (out / "student.pt").write_bytes(b"trained for an hour")  # what `splitpipe bottleneck` adds
    with pytest.raises(SplitpipeError, match=r"holds a learned bottleneck's trained student \(student.pt\)"):
        export_split(REQ, 2, out)
    assert (out / "student.pt").read_bytes() == b"trained for an hour"
    assert json.loads((out / "manifest.json").read_text())["split"]["id"] == 1
    export_split(REQ, 2, out, replaces=("student.onnx", "student.pt"))  # a new bottleneck replaces it
    assert not (out / "student.pt").exists()


def test_the_current_folder_is_refused_and_a_link_is_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "split"
    export_split(REQ, 1, out)
    monkeypatch.chdir(out)  # exporting replaces the folder: a shell in it would be left in a deleted one
    with pytest.raises(SplitpipeError, match=r"--out \. is the current folder"):
        export_split(REQ, 2, ".")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "latest").symlink_to("split")
    export_split(REQ, 2, tmp_path / "latest")  # the folder it points to is replaced; the link stays
    assert (tmp_path / "latest").is_symlink()
    assert json.loads((out / "manifest.json").read_text())["split"]["id"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "split"]
