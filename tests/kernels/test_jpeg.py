"""The jpeg codec: a real photograph round trip, quality ordering, batches, grey images, refusals,
and decoding of untrusted payloads (length prefixes, headers checked before pixels, bombs)."""

from __future__ import annotations

import dataclasses
import io
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from functools import cache

import numpy as np
import pytest
from PIL import Image

from splitpipe.errors import CodecError, SplitpipeError
from splitpipe.kernels import (
    DEFAULT_CANDIDATES,
    Calibration,
    CodecMeta,
    calibrate,
    codec_names,
    decode,
    get_codec,
    measure_codec,
    pick_codec,
    relative_l2,
)
from splitpipe.kernels import jpeg as jpeg_stage

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


@cache
def _pixels(size: int = 224) -> np.ndarray:
    """scikit-learn's china.jpg (a real photograph, shipped with it), resized, HxWx3 uint8."""
    from sklearn.datasets import load_sample_image

    img = Image.fromarray(load_sample_image("china.jpg")).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img)


def photo(size: int = 224) -> np.ndarray:
    """The photograph as a model input: ImageNet mean/std, NCHW float32."""
    x = (_pixels(size).astype(np.float32) / 255 - MEAN) / STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def grey_photo(size: int = 224) -> np.ndarray:
    grey = np.asarray(Image.fromarray(_pixels(size)).convert("L"), np.float32) / 255
    return ((grey - 0.449) / 0.226)[None, None].astype(np.float32)


def _sof_patch(stream: bytes, height: int, width: int) -> bytes:
    """The same JPEG stream with its frame header (SOF) declaring another size."""
    i = 2
    while True:
        assert stream[i] == 0xFF
        marker, length = stream[i + 1], struct.unpack(">H", stream[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            patched = bytearray(stream)
            patched[i + 5 : i + 9] = struct.pack(">HH", height, width)
            return bytes(patched)
        i += 2 + length


def _one_stream(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


# ---- round trips ---------------------------------------------------------------------------


def test_photo_round_trip_at_quality_90() -> None:
    x = photo()
    payload, meta = get_codec("jpeg").encode(x)
    y = decode(payload, meta)
    assert y.shape == x.shape and y.dtype == np.float32
    err = relative_l2(x, y)
    # measured 0.054 here: the same as JPEG-coding the uint8 photo itself at q90 (4:2:0 chroma)
    assert err < 0.07, err
    int8, _ = get_codec("int8/ch").encode(x)
    int8_zstd, _ = get_codec("int8/ch+zstd").encode(x)
    assert len(payload) * 25 < x.nbytes  # measured: 37x smaller than raw
    assert len(payload) * 5 < len(int8_zstd) < len(int8)  # measured: 7x smaller than int8/ch+zstd
    # the decoded photograph looks like the photograph: per-pixel colours close to the original
    pixels = np.clip((y[0].transpose(1, 2, 0) * STD + MEAN) * 255, 0, 255)
    assert float(np.abs(pixels - _pixels().astype(np.float32)).mean()) < 4.0


def test_same_error_as_jpeg_of_the_pixels_themselves() -> None:
    """Per-channel uint8 quantization of a normalised image undoes the normalisation, so the
    codec's loss is JPEG's own loss on the photograph."""
    buf = io.BytesIO()
    Image.fromarray(_pixels()).save(buf, format="JPEG", quality=90)
    direct = (np.asarray(Image.open(buf), np.float32) / 255 - MEAN) / STD
    direct_err = relative_l2(photo(), direct.transpose(2, 0, 1)[None])
    payload, meta = get_codec("jpeg").encode(photo())
    err = relative_l2(photo(), decode(payload, meta))
    assert abs(err - direct_err) < 0.1 * direct_err
    assert abs(len(payload) - 4 - len(buf.getvalue())) < 0.05 * len(buf.getvalue())


def test_lower_quality_fewer_bytes_more_error() -> None:
    x = photo()
    sizes, errors = [], []
    for q in (20, 50, 75, 90, 95):
        payload, meta = get_codec(f"jpeg:{q}").encode(x)
        assert meta.codec == ("jpeg" if q == 90 else f"jpeg:{q}")
        sizes.append(len(payload))
        errors.append(relative_l2(x, decode(payload, meta)))
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes), sizes
    assert errors == sorted(errors, reverse=True), errors


def test_batch_of_two_is_two_length_prefixed_streams() -> None:
    x = np.concatenate([photo(), photo()[:, :, :, ::-1] * np.float32(0.5)])
    payload, meta = get_codec("jpeg").encode(x)
    assert meta.shape == (2, 3, 224, 224)
    streams = jpeg_stage.split_streams(payload, 2)
    assert sum(len(s) + 4 for s in streams) == len(payload)
    assert struct.unpack_from("<I", payload)[0] == len(streams[0])
    for stream in streams:
        assert stream[:2] == b"\xff\xd8" and stream[-2:] == b"\xff\xd9"  # SOI ... EOI
        with Image.open(io.BytesIO(stream)) as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (224, 224))
    y = decode(payload, meta)
    assert y.shape == x.shape
    # the server hands payloads over as memoryviews of the request's buffer
    np.testing.assert_array_equal(decode(memoryview(payload), meta), y)
    np.testing.assert_array_equal(decode(bytearray(payload), meta), y)
    # scales span the batch: the same per-channel rule as int8/ch on the same tensor
    _, meta8 = get_codec("int8/ch").encode(x)
    assert (meta.scales, meta.zero_points, meta.axis) == (meta8.scales, meta8.zero_points, 1)
    # the half-contrast image lies inside the photo's range, so the photo's stream is the one it
    # gets alone; the other uses half the codes, hence more relative error (measured 0.070)
    single, _ = get_codec("jpeg").encode(photo())
    assert streams[0] == single[4:]
    assert relative_l2(x[0], y[0]) < 0.07 and relative_l2(x[1], y[1]) < 0.09


def test_grey_images() -> None:
    x = grey_photo()
    payload, meta = get_codec("jpeg:75").encode(x)
    (stream,) = jpeg_stage.split_streams(payload, 1)
    with Image.open(io.BytesIO(stream)) as img:
        assert (img.mode, img.size) == ("L", (224, 224))
    y = decode(payload, meta)
    assert y.shape == (1, 1, 224, 224)
    assert relative_l2(x, y) < 0.08
    assert len(payload) * 20 < x.nbytes  # measured 24x


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_dtype_restored(dtype: str) -> None:
    x = photo(64).astype(dtype)
    payload, meta = get_codec("jpeg").encode(x)
    assert meta.dtype == dtype
    y = decode(payload, meta)
    assert y.dtype == np.dtype(dtype) and relative_l2(x, y) < 0.1


def test_empty_batch() -> None:
    x = np.zeros((0, 3, 8, 8), np.float32)
    payload, meta = get_codec("jpeg").encode(x)
    assert payload == b""
    assert decode(payload, meta).shape == (0, 3, 8, 8)


def test_fast_path_equals_reference() -> None:
    x = np.concatenate([photo(96), -photo(96)])
    fast, ref = get_codec("jpeg:80"), get_codec("jpeg:80", impl="reference")
    pf, mf = fast.encode(x)
    pr, mr = ref.encode(x)
    assert mf == mr
    assert pf == pr
    np.testing.assert_array_equal(fast.decode(pf, mf), ref.decode(pr, mr))
    np.testing.assert_array_equal(decode(pf, mf), decode(pf, mf, impl="reference"))


def test_constant_and_infinite_inputs() -> None:
    x = np.full((1, 3, 16, 16), 2.5, np.float32)
    payload, meta = get_codec("jpeg").encode(x)
    assert float(np.abs(decode(payload, meta) - x).max()) < 0.05
    x = photo(32)
    x[0, 1, 3, 3] = np.inf
    payload, meta = get_codec("jpeg").encode(x)
    y = decode(payload, meta)
    assert np.isfinite(y).all()  # saturated to the top code, like int8/ch
    x[0, 1, 3, 3] = np.nan
    with pytest.raises(CodecError, match="contains NaN"):
        get_codec("jpeg").encode(x)


def test_static_scales() -> None:
    samples = [photo(64), -photo(64)]
    cal = calibrate("jpeg:75", samples)
    assert cal.codec == "jpeg:75" and cal.axis == 1 and len(cal.scale) == 3
    assert Calibration.from_json(cal.to_json()) == cal
    payload, meta = get_codec("jpeg:75", calibration=cal).encode(samples[0])
    assert np.array_equal(meta.scale_array(), np.array(cal.scale, np.float32))
    assert relative_l2(samples[0], decode(payload, meta)) < 0.1
    with pytest.raises(SplitpipeError, match="calibration is for jpeg:75, not for jpeg "):
        get_codec("jpeg", calibration=cal)


# ---- names, shapes, dtypes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("jpeg+zstd", r"jpeg is entropy coded already; \+zstd does not apply"),
        ("jpeg:75+lz4", r"\+lz4 does not apply"),
        ("jpeg+zstd:3", r"\+zstd does not apply"),
        ("jpeg/ch", "jpeg takes no /sym or /ch"),
        ("jpeg/sym", "jpeg takes no /sym or /ch"),
        ("jpeg:0", "jpeg quality must be 1..100"),
        ("jpeg:101", "jpeg quality must be 1..100"),
        ("jpeg:-5", "jpeg quality must be 1..100"),
        ("jpeg:high", "unknown codec 'jpeg:high'"),
        ("int8:50", r"only jpeg takes a quality"),
        ("jpg", "base must be one of"),
    ],
)
def test_bad_names(name: str, message: str) -> None:
    with pytest.raises(SplitpipeError, match=message) as info:
        get_codec(name)
    assert "jpeg:QUALITY (1-100" in str(info.value)  # the accepted forms are listed


def test_names_canonicalise() -> None:
    assert get_codec("jpeg").name == "jpeg"
    assert get_codec("JPEG:90").name == "jpeg"
    assert get_codec("jpeg:075").name == "jpeg:75"
    assert get_codec("jpeg:1").spec.quality == 1 and get_codec("jpeg:100").spec.quality == 100
    assert "jpeg" in codec_names(image=True) and "jpeg" in codec_names(entropy=False, image=True)
    assert not any(n.startswith("jpeg") for n in codec_names())
    assert not any(n.startswith("jpeg") for n in DEFAULT_CANDIDATES)  # images only: not for auto


@pytest.mark.parametrize(
    "shape",
    [(1, 3, 224), (3, 224, 224), (1, 4, 8, 8), (1, 2, 8, 8), (1, 16, 8, 8), (1, 3, 8, 8, 1), (1, 3, 0, 8)],
)
def test_refuses_shapes_that_are_not_images(shape: tuple[int, ...]) -> None:
    with pytest.raises(CodecError, match=rf"codec jpeg takes .*{list(shape)}".replace("[", r"\[")):
        get_codec("jpeg").encode(np.zeros(shape, np.float32))


def test_refuses_sides_beyond_jpeg() -> None:
    with pytest.raises(CodecError, match=r"1\.\.65500 pixels high and wide, got 65501x1"):
        get_codec("jpeg").encode(np.zeros((1, 1, 65501, 1), np.float32))


@pytest.mark.parametrize("dtype", ["uint8", "int32", "bool"])
def test_refuses_non_float_dtypes(dtype: str) -> None:
    with pytest.raises(CodecError, match=f"cannot encode dtype {dtype}; accepted: float16, float32, float64"):
        get_codec("jpeg").encode(np.zeros((1, 3, 8, 8), dtype))


def test_channel_axis_is_fixed() -> None:
    with pytest.raises(SplitpipeError, match="its channel axis is 1, not -1"):
        get_codec("jpeg", axis=-1)


# ---- meta -----------------------------------------------------------------------------------


def test_meta_round_trips_and_carries_quality_in_the_name() -> None:
    payload, meta = get_codec("jpeg:75").encode(photo(32))
    params = meta.to_params()
    assert params["codec"] == "jpeg:75" and params["codec_axis"] == 1
    assert set(params) == {
        "codec",
        "codec_version",
        "codec_dtype",
        "codec_shape",
        "codec_axis",
        "codec_scales",
        "codec_zero_points",
    }
    assert CodecMeta.from_params(params) == meta
    assert CodecMeta.from_json(meta.to_json()) == meta
    assert meta.spec.quality == 75
    assert sum(len(str(k)) + len(str(v)) for k, v in params.items()) < 200
    np.testing.assert_array_equal(decode(payload, CodecMeta.from_params(params)), decode(payload, meta))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"codec_shape": "1,4,8,8"}, r"NCHW image tensors with 1 or 3 channels, got shape \[1, 4, 8, 8\]"),
        ({"codec_shape": "3,8,8"}, r"got shape \[3, 8, 8\]"),
        ({"codec_shape": "1,3,0,8"}, "1..65500 pixels"),
        ({"codec_shape": "1,3,70000,8"}, "1..65500 pixels"),
        ({"codec_axis": 0}, "axis of jpeg must be 1"),
        ({"codec_axis": None}, r"lacks \['axis'\]"),
        ({"codec_scale": 1.0}, r"must not carry \['scale'\]"),
        ({"codec": "jpeg+zstd"}, "does not apply"),
        ({"codec": "jpeg:101"}, "quality must be 1..100"),
        ({"codec_dtype": "uint8"}, "dtype 'uint8' is not valid for jpeg"),
        ({"codec_zero_points": "AAAAAA=="}, "holds 4 bytes, expected 3"),
    ],
)
def test_from_params_rejects(change: dict[str, object], message: str) -> None:
    _, meta = get_codec("jpeg").encode(photo(8))
    params = meta.to_params()
    for key, value in change.items():
        if value is None:
            params.pop(key)
        else:
            params[key] = value
    with pytest.raises(CodecError, match=message):
        CodecMeta.from_params(params)


def test_decode_validates_metas_built_by_hand() -> None:
    payload, meta = get_codec("jpeg").encode(photo(8))
    for change, message in (
        ({"shape": (1, 3, 8)}, "NCHW image tensors"),
        ({"axis": 2}, "axis of jpeg must be 1"),
        ({"scales": b"\0" * 12}, "finite and positive"),
    ):
        with pytest.raises(CodecError, match=message):
            decode(payload, dataclasses.replace(meta, **change))  # type: ignore[arg-type]


# ---- decoding untrusted payloads ---------------------------------------------------------------


@pytest.fixture(scope="module")
def encoded() -> tuple[bytes, CodecMeta]:
    return get_codec("jpeg").encode(photo(64))


def test_size_limit_checked_first(encoded: tuple[bytes, CodecMeta]) -> None:
    payload, meta = encoded
    with pytest.raises(CodecError, match="above the limit of 1000"):
        decode(payload, meta, max_bytes=1000)
    huge = dataclasses.replace(meta, shape=(1, 3, 50000, 50000))
    tracemalloc.start()
    with pytest.raises(CodecError, match="above the limit"):
        decode(payload, huge)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20


def test_truncated_payloads(encoded: tuple[bytes, CodecMeta]) -> None:
    payload, meta = encoded
    for bad, message in (
        (b"", "too short for 1 length-prefixed"),
        (payload[:3], "too short"),
        (payload[:-1], r"declares \d+ bytes, \d+ remain"),
        (payload[: len(payload) // 2], r"declares \d+ bytes, \d+ remain"),
        (payload + b"\0", "1 bytes after its 1 streams"),
        (payload + payload, r"\d+ bytes after its 1 streams"),
    ):
        with pytest.raises(CodecError, match=message):
            decode(bad, meta)
    two = dataclasses.replace(meta, shape=(2, *meta.shape[1:]))
    with pytest.raises(CodecError, match="ends before the length of stream 1 of 2"):
        decode(payload + b"\0", two)


def test_wrong_length_prefixes(encoded: tuple[bytes, CodecMeta]) -> None:
    payload, meta = encoded
    (length,) = struct.unpack_from("<I", payload)
    body = payload[4:]
    for declared in (length + 1, 0xFFFFFFFF):
        with pytest.raises(CodecError, match=rf"declares {declared} bytes, {length} remain"):
            decode(struct.pack("<I", declared) + body, meta)
    with pytest.raises(CodecError, match="declares 0 bytes"):
        decode(struct.pack("<I", 0) + body, meta)
    # shorter: the stream is cut and the rest is trailing data
    with pytest.raises(CodecError, match="1 bytes after its 1 streams"):
        decode(struct.pack("<I", length - 1) + body, meta)


def test_header_must_match_the_meta(encoded: tuple[bytes, CodecMeta]) -> None:
    payload, meta = encoded
    for shape in ((1, 3, 64, 63), (1, 3, 32, 64)):
        with pytest.raises(
            CodecError, match=r"JPEG image of 64x64 pixels in mode RGB, the meta implies JPEG"
        ):
            decode(payload, dataclasses.replace(meta, shape=shape))
    # a grey stream where the meta says RGB, and the other way round
    grey_payload, grey_meta = get_codec("jpeg").encode(grey_photo(64))
    with pytest.raises(CodecError, match="in mode L, the meta implies JPEG 64x64 in mode RGB"):
        decode(grey_payload, meta)
    with pytest.raises(CodecError, match="in mode RGB, the meta implies JPEG 64x64 in mode L"):
        decode(payload, grey_meta)
    # a real JPEG whose own frame header lies about its size
    lying = _sof_patch(payload[4:], 64, 65)
    with pytest.raises(CodecError, match="65x64 pixels"):
        decode(_one_stream(lying), meta)


def test_only_jpeg_streams_are_read(encoded: tuple[bytes, CodecMeta]) -> None:
    _, meta = encoded
    buf = io.BytesIO()
    Image.fromarray(_pixels(64)).save(buf, format="PNG")
    with pytest.raises(CodecError, match="jpeg stream 0 is not a readable JPEG"):
        decode(_one_stream(buf.getvalue()), meta)


@pytest.mark.parametrize("pillow_limit", [True, False])
def test_decompression_bomb_header_is_refused_without_allocating(
    encoded: tuple[bytes, CodecMeta], pillow_limit: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 600-byte JPEG whose header declares 50000x50000 (7.5 GB of RGB) and one that declares
    8000x8000, under Pillow's own bomb limit. With ``pillow_limit=False`` the application has
    switched Pillow's limit off (``Image.MAX_IMAGE_PIXELS = None``, a common setting): the
    codec's own check against the meta must hold alone."""
    payload, meta = encoded
    if not pillow_limit:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    small = get_codec("jpeg").encode(np.zeros((1, 3, 8, 8), np.float32))[0][4:]
    tracemalloc.start()
    for h, w in ((50000, 50000), (8000, 8000)):
        bomb = _one_stream(_sof_patch(small, h, w))
        assert len(bomb) < 1000
        with pytest.raises(CodecError, match="jpeg stream 0"):
            decode(bomb, meta)
        # first in a batch of two: refused before the valid stream is decoded
        with pytest.raises(CodecError, match="jpeg stream 0"):
            decode(bomb + payload, dataclasses.replace(meta, shape=(2, 3, 64, 64)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20, f"decoding a bomb allocated {peak} bytes"


BOMB_SCRIPT = textwrap.dedent(
    """
    import io, resource, struct, sys
    import numpy as np
    from PIL import Image
    from splitpipe.errors import CodecError
    from splitpipe.kernels import decode, get_codec

    bomb = bytes.fromhex(sys.argv[1])
    payload, meta = get_codec("jpeg").encode(np.zeros((1, 3, 8, 8), np.float32))
    decode(payload, meta)  # loads Pillow's plugins before the limit
    Image.MAX_IMAGE_PIXELS = None  # Pillow's own bomb check off: the codec's must hold
    vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, ((vm << 10) + (256 << 20), resource.RLIM_INFINITY))
    try:
        decode(struct.pack("<I", len(bomb)) + bomb, meta)
    except CodecError as exc:
        print("refused:", exc)
    try:  # control: decoding the same bytes with Pillow does try to allocate the image
        Image.open(io.BytesIO(bomb)).load()
    except MemoryError:
        print("control: MemoryError")
    """
)


def test_bomb_refused_under_an_address_space_limit() -> None:
    """tracemalloc does not see Pillow's C allocations: decode the bomb in a process whose
    address space is capped at 256 MiB above its size, where Pillow itself, decoding the same
    bytes, runs out of memory (the control)."""
    small = get_codec("jpeg").encode(np.zeros((1, 3, 8, 8), np.float32))[0][4:]
    bomb = _sof_patch(small, 50000, 50000)
    proc = subprocess.run(
        [sys.executable, "-c", BOMB_SCRIPT, bomb.hex()], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "refused: jpeg stream 0 is a JPEG image of 50000x50000 pixels" in proc.stdout
    assert "control: MemoryError" in proc.stdout


def test_garbage(encoded: tuple[bytes, CodecMeta]) -> None:
    _, meta = encoded
    rng = np.random.default_rng(5)
    for n in (1, 2, 100, 5000):
        junk = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        with pytest.raises(CodecError):
            decode(junk, meta)
        with pytest.raises(CodecError, match="jpeg stream 0"):
            decode(_one_stream(junk), meta)
        with pytest.raises(CodecError, match="jpeg stream 0"):
            decode(_one_stream(b"\xff\xd8" + junk), meta)


def test_corrupted_streams_decode_or_raise_codec_error(encoded: tuple[bytes, CodecMeta]) -> None:
    """Byte changes, cuts and insertions anywhere in a real stream: the decoder either returns
    an array of the meta's shape (JPEG has no checksum; the pixels may be wrong) or raises
    CodecError, never anything else."""
    payload, meta = encoded
    stream = payload[4:]
    rng = np.random.default_rng(11)
    outcomes = {"decoded": 0, "refused": 0}
    for t in range(600):
        b = bytearray(stream)
        if t % 3 == 0:
            for _ in range(int(rng.integers(1, 4))):
                b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
        elif t % 3 == 1:
            b = b[: int(rng.integers(1, len(b)))]
        else:
            i = int(rng.integers(2, len(b)))
            b[i:i] = rng.integers(0, 256, int(rng.integers(1, 40)), dtype=np.uint8).tobytes()
        try:
            y = decode(_one_stream(bytes(b)), meta)
        except CodecError:
            outcomes["refused"] += 1
        else:
            assert y.shape == meta.shape and y.dtype == np.float32
            outcomes["decoded"] += 1
    assert outcomes["refused"] > 50 and outcomes["decoded"] > 50, outcomes


# ---- for the planner ----------------------------------------------------------------------------


def test_measure_codec_on_an_image() -> None:
    m = measure_codec("jpeg", photo(), repeats=1)
    assert m.codec == "jpeg" and m.raw_bytes == 3 * 224 * 224 * 4
    assert m.bytes == len(get_codec("jpeg").encode(photo())[0])
    assert m.ratio > 25 and 0 < m.rel_l2 < 0.07 and m.cosine > 0.998
    assert m.source == "measured"


def test_pick_codec_with_jpeg_as_a_candidate() -> None:
    samples = [photo(64)]
    candidates = ("jpeg:75", "jpeg", "int8/ch+zstd", "raw")
    assert pick_codec(samples, 0.2, candidates).codec == "jpeg:75"
    assert pick_codec(samples, 0.01, candidates).codec == "int8/ch+zstd"
    assert pick_codec(samples, 0.2, candidates, static=True).codec == "jpeg:75"
    # on a tensor that is not an image, jpeg is skipped with the reason
    pick = pick_codec([np.ones((1, 16, 4, 4), np.float32)], 0.01, ("jpeg", "int8"))
    assert pick.codec == "int8"
    assert "1 or 3 channels, got shape [1, 16, 4, 4]" in pick.skipped["jpeg"]


def test_planner_measures_jpeg_on_an_input() -> None:
    from splitpipe.partition.codecs import codec_for_cut

    cut = codec_for_cut("jpeg", [[photo()], [photo()[:, :, ::-1].copy()]], repeats=1)
    assert cut.codec == "jpeg"
    one = len(get_codec("jpeg").encode(photo())[0])
    assert one < cut.tx_bytes < one + 300  # payload plus its parameters on the wire
    assert 0 < cut.rel_l2 < 0.07 and cut.encode_ms > 0 and cut.decode_ms > 0


# ---- environments without Pillow ------------------------------------------------------------------

NO_PIL = textwrap.dedent(
    """
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "PIL":
                raise ImportError(f"{name} blocked for this test")
    if sys.argv[1] == "block":
        sys.meta_path.insert(0, Block())

    import numpy as np
    from splitpipe.errors import CodecError, UnavailableError
    from splitpipe.kernels import CodecMeta, codec_names, decode, get_codec
    x = np.maximum(np.random.default_rng(0).standard_normal((1, 3, 5, 5), dtype=np.float32), 0)
    for name in codec_names(entropy=False):
        payload, meta = get_codec(name).encode(x)
        assert decode(payload, meta).shape == x.shape, name
    print("PIL imported:", "PIL" in sys.modules)
    try:
        get_codec("jpeg:75")
        print("jpeg available")
    except UnavailableError as exc:
        print("unavailable:", exc)
    meta = CodecMeta(codec="jpeg", dtype="float32", shape=(1, 3, 5, 5), axis=1,
                     scales=np.ones(3, "<f4").tobytes(), zero_points=bytes(3))
    try:
        decode(b"\\x04\\x00\\x00\\x00abcd", meta)
    except CodecError as exc:
        print("decode:", exc)
    """
)


def test_without_pillow_jpeg_is_unavailable_and_the_rest_works() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", NO_PIL, "block"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "PIL imported: False" in out
    assert "unavailable: codec jpeg needs the Pillow package, which is not installed here" in out
    assert "decode: payload uses jpeg but it cannot be decoded here" in out


def test_pillow_is_imported_only_when_jpeg_is_used() -> None:
    proc = subprocess.run([sys.executable, "-c", NO_PIL, "free"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "PIL imported: False" in proc.stdout
    assert "jpeg available" in proc.stdout
    assert "decode: jpeg stream 0 is not a readable JPEG" in proc.stdout
