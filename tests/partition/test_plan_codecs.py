"""The codec stage of planning and export: real payload bytes, auto choice, static scales, folded Q/DQ."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from splitpipe.errors import SplitpipeError
from splitpipe.kernels import DEFAULT_CANDIDATES, Calibration, get_codec
from splitpipe.partition.export import export_split
from splitpipe.partition.plan import PlanRequest, make_plan

BASE = dict(
    model="tests.fixtures.models:tiny_net",
    input_shape=(1, 3, 32, 32),
    device="rpi4",
    server="gpu-server",
    profile_mode="analytic",
)


def plan_with(codec: str, **extra: object):  # type: ignore[no-untyped-def]
    return make_plan(PlanRequest(**{**BASE, "codec": codec, **extra}))  # type: ignore[arg-type]


def test_bytes_come_from_encoding_the_real_tensor() -> None:
    raw, int8, zstd = plan_with("raw"), plan_with("int8"), plan_with("int8+zstd")
    for r, q, z in zip(raw.candidates, int8.candidates, zstd.candidates, strict=True):
        numel = sum(int(np.prod(t["shape"])) for t in r.tensors)
        # the payload, plus the codec parameters (name, dtype, shape; scale and zero point) on the wire
        assert 4 * numel < r.tx_bytes < 4 * numel + 100 and r.codec_error == 0.0
        assert numel < q.tx_bytes < numel + 200  # one byte per element
        assert 0 < q.codec_error < 0.01
        assert q.codec == "int8" and z.codec == "int8+zstd"
        assert q.estimated["encode_ms"] is True  # measured here, scaled to the rpi4: an estimate
    # post-ReLU activations are sparse: the entropy stage pays off on the whole
    assert sum(z.tx_bytes for z in zstd.candidates) < sum(q.tx_bytes for q in int8.candidates)


def test_auto_picks_the_smallest_codec_within_the_error_budget() -> None:
    plan = plan_with("auto", max_error=0.05)
    for c in plan.candidates:
        assert c.codec in DEFAULT_CANDIDATES
        assert c.codec_error <= 0.05
    lossless = plan_with("auto", max_error=0.0)
    assert all(c.codec_error == 0.0 for c in lossless.candidates)
    # (int8/ch is exact on a tensor with one value per channel, but its per-channel scales cost more than it saves)
    assert {c.codec for c in lossless.candidates} <= {"raw", "raw+zstd"}
    loose = plan_with("auto", max_error=0.5)
    assert sum(c.tx_bytes for c in loose.candidates) <= sum(c.tx_bytes for c in plan.candidates)


def test_unknown_codec_is_a_user_error() -> None:
    with pytest.raises(SplitpipeError, match="accepted"):
        plan_with("int7")


def test_static_calibration_is_stored(tmp_path: Path) -> None:
    req = PlanRequest(**{**BASE, "codec": "int8/ch"})  # type: ignore[arg-type]
    m = export_split(req, 4, tmp_path / "s", calibrate=True).manifest
    assert m["codec"]["name"] == "int8/ch"
    (name,) = m["codec"]["calibration"]
    cal = Calibration.from_json(m["codec"]["calibration"][name])
    assert cal.codec == "int8/ch" and cal.axis == 1 and len(cal.scale) == m["cut"][0]["shape"][1]
    get_codec("int8/ch", calibration=cal)  # usable by the agent as it is


def test_folded_qdq_graphs_agree_with_the_kernel_codec(tmp_path: Path) -> None:
    req = PlanRequest(**{**BASE, "codec": "int8/sym/ch+zstd"})  # type: ignore[arg-type]
    folded = export_split(req, 4, tmp_path / "folded", fold_qdq=True).manifest
    plain = export_split(req, 4, tmp_path / "plain").manifest
    assert folded["codec"]["name"] == "raw+zstd" and folded["codec"]["folded"] == "int8/sym/ch"
    assert folded["cut"][0]["dtype"] == "int8" and plain["cut"][0]["dtype"] == "float32"
    wire = folded["cut"][0]["name"]
    cal = Calibration.from_json(folded["codec"]["calibration"][wire])
    codec = get_codec("int8/sym/ch", calibration=cal)

    x = np.random.default_rng(7).standard_normal((1, 3, 32, 32)).astype(np.float32)
    run = lambda d, part, feed: ort.InferenceSession(str(tmp_path / d / f"{part}.onnx")).run(None, feed)  # noqa: E731
    q = run("folded", "head", {"x": x})[0]
    f = run("plain", "head", {"x": x})[0]
    payload, meta = codec.encode(f)
    assert q.dtype == np.int8 and q.tobytes() == payload  # the same codes on the wire
    y_folded = run("folded", "tail", {wire: q})[0]
    y_kernel = run("plain", "tail", {plain["cut"][0]["name"]: codec.decode(payload, meta)})[0]
    np.testing.assert_allclose(y_folded, y_kernel, rtol=1e-5, atol=1e-6)
    assert folded["verification"]["folded_codes_differing"] == 0


def test_fold_needs_symmetric_int8(tmp_path: Path) -> None:
    req = PlanRequest(**{**BASE, "codec": "int8"})  # type: ignore[arg-type]
    with pytest.raises(SplitpipeError, match="symmetric int8"):
        export_split(req, 4, tmp_path / "s", fold_qdq=True)
    assert not (tmp_path / "s").exists()


def test_plan_json_names_each_candidates_codec(tmp_path: Path) -> None:
    plan = plan_with("auto", max_error=0.05)
    plan.write(tmp_path / "p.json")
    data = json.loads((tmp_path / "p.json").read_text())
    assert all("codec" in c and "codec_error" in c for c in data["candidates"])
    assert data["request"]["max_error"] == 0.05


def _pictures(folder: Path, n: int) -> Path:
    """Crops of scikit-learn's sample photographs, as the agent's images source reads them."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    folder.mkdir()
    for i in range(n):
        photo = load_sample_image(("china.jpg", "flower.jpg")[i % 2])
        crop = photo[40 * i : 40 * i + 256, 60 * i : 60 * i + 256]
        Image.fromarray(crop).resize((32, 32), Image.Resampling.BILINEAR).save(folder / f"{i}.png")
    return folder


def test_calibration_images_measure_codecs_on_pictures(tmp_path: Path) -> None:
    from splitpipe.partition.plan import analyse, calibration_feeds

    folder = _pictures(tmp_path / "pics", 3)
    req = PlanRequest(**{**BASE, "calibration_images": str(folder), "calibration_samples": 2})  # type: ignore[arg-type]
    a = analyse(req)
    feeds = calibration_feeds(req, a.graph, a.loaded.preprocess)
    # the first two pictures in name order, scaled to 0..1 (no preprocess entry for this model)
    assert len(feeds) == 2 and all(f["x"].min() >= 0.0 and f["x"].max() <= 1.0 for f in feeds)
    noise = plan_with("int8", offload_codec="jpeg")
    photos = plan_with("int8", offload_codec="jpeg", calibration_images=str(folder))
    assert photos.request.calibration_images == str(folder)
    # JPEG compresses a photograph better than noise (at 32x32 its headers are most of the bytes)
    assert photos.baselines["offload"].tx_bytes < noise.baselines["offload"].tx_bytes
    assert photos.baselines["offload"].codec_error < noise.baselines["offload"].codec_error
    with pytest.raises(SplitpipeError, match="images directory not found"):
        plan_with("int8", calibration_images=str(tmp_path / "missing"))
