"""The agent against the real server on loopback: every frame answered, every output right."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from splitpipe.edge import (
    AgentOptions,
    ClientOptions,
    FrameResult,
    SourceSpec,
    SyntheticSource,
    load_export,
    run_agent,
)
from splitpipe.server import ServerThread
from tests.edge.conftest import Exports


def _collect(results: dict[int, dict[str, np.ndarray]]):  # type: ignore[no-untyped-def]
    def on_result(result: FrameResult) -> None:
        results[result.record.id] = {k: v.copy() for k, v in result.outputs.items()}

    return on_result


def _references(exports: Exports, export_dir: Path, frames: int) -> list[dict[str, np.ndarray]]:
    """The whole model's outputs on synthetic frames 0..pool-1 (frame i is frame i % pool)."""
    source = SyntheticSource(load_export(export_dir).inputs, seed=0)
    return [exports.reference(source.frame(i)) for i in range(min(source.pool_size, frames))]


@pytest.mark.parametrize(("codec", "rtol", "head_thread"), [("raw", 1e-6, True), ("int8", 0.01, False)])
def test_1000_frames_none_lost_outputs_equal_the_whole_model(
    exports: Exports, server: ServerThread, codec: str, rtol: float, head_thread: bool
) -> None:
    export_dir = getattr(exports, codec)
    results: dict[int, dict[str, np.ndarray]] = {}
    report = run_agent(
        AgentOptions(
            export_dir,
            server=f"127.0.0.1:{server.port}",
            frames=1000,
            client=ClientOptions(window=8),
            log_interval_s=0,
            head_thread=head_thread,  # both ways of running the head
        ),
        _collect(results),
    )
    s = report.summary
    assert (s["captured"], s["completed"], s["failed"], s["lost"]) == (1000, 1000, 0, 0)
    assert sorted(results) == list(range(1000))
    refs = _references(exports, export_dir, 1000)
    worst = 0.0
    for i, got in results.items():
        want = refs[i % len(refs)]
        assert got.keys() == want.keys()
        for name, w in want.items():
            err = float(np.max(np.abs(got[name] - w)) / np.max(np.abs(w)))
            worst = max(worst, err)
    assert worst <= rtol, f"{codec}: worst relative error {worst:.3g}"
    if codec == "int8":
        assert worst > 0  # it did quantize
    # the codec really ran: int8 sends a quarter of the float bytes
    cut_bytes = 8 * 16 * 16 * 4
    assert s["payload_bytes_per_frame"] == (cut_bytes if codec == "raw" else cut_bytes // 4)
    assert report.frames[0].server.keys() >= {"queue_us", "decode_us", "tail_us", "batch_size", "total_us"}


def test_offload_sends_the_input_and_local_needs_no_server(exports: Exports, server: ServerThread) -> None:
    for key in ("offload", "local"):
        export_dir = getattr(exports, key)
        results: dict[int, dict[str, np.ndarray]] = {}
        report = run_agent(
            AgentOptions(
                export_dir,
                server=f"127.0.0.1:{server.port}" if key == "offload" else None,
                frames=40,
                log_interval_s=0,
            ),
            _collect(results),
        )
        refs = _references(exports, export_dir, 40)
        for i, got in results.items():
            for name, want in refs[i % len(refs)].items():
                np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-6)
        s = report.summary
        assert s["completed"] == 40 and s["lost"] == 0
        frame = report.frames[0].to_json()
        if key == "local":
            assert frame["path"] == "local" and frame["rtt_ms"] is None and frame["server"] == {}
            assert frame["tx_bytes"] == 0 and s["bound"]["stage"] == "device"
        else:
            assert frame["path"] == "remote" and frame["payload_bytes"] == 3 * 32 * 32 * 4


def test_images_are_resized_and_normalised_as_the_manifest_says(
    exports: Exports, server: ServerThread, tmp_path: Path
) -> None:
    from PIL import Image

    # the same export with an ImageNet-style preprocess entry (the manifest, not head.onnx, says it)
    export_dir = tmp_path / "export"
    shutil.copytree(exports.raw, export_dir)
    manifest = json.loads((export_dir / "manifest.json").read_text())
    manifest["preprocess"] = {
        "layout": "NCHW",
        "size": [32, 32],
        "mean": [0.5, 0.4, 0.3],
        "std": [0.2, 0.25, 0.3],
    }
    (export_dir / "manifest.json").write_text(json.dumps(manifest))
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(3)
    sizes = [(40, 50), (32, 32), (64, 20)]
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"{i}.png")
    (images / "notes.txt").write_text("not an image")

    seen: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}

    def on_result(result: FrameResult) -> None:
        seen[result.record.id] = (result.inputs["x"].copy(), {k: v.copy() for k, v in result.outputs.items()})

    report = run_agent(
        AgentOptions(
            export_dir,
            server=f"127.0.0.1:{server.port}",
            source=SourceSpec("images", str(images), loop=True),
            frames=7,
            log_interval_s=0,
        ),
        on_result,
    )
    assert report.summary["completed"] == 7
    mean = np.array([0.5, 0.4, 0.3], np.float32).reshape(3, 1, 1)
    std = np.array([0.2, 0.25, 0.3], np.float32).reshape(3, 1, 1)
    for i, (x, outputs) in seen.items():
        with Image.open(images / f"{i % 3}.png") as img:
            pixels = np.asarray(img.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR), np.float32)
        want = ((pixels.transpose(2, 0, 1) / 255 - mean) / std)[None]
        np.testing.assert_allclose(x, want, rtol=1e-6, atol=1e-6)
        for name, value in exports.reference({"x": x}).items():
            np.testing.assert_allclose(outputs[name], value, rtol=1e-5, atol=1e-6)


def test_images_end_without_loop(exports: Exports, tmp_path: Path) -> None:
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(tmp_path / f"{i}.jpg")
    report = run_agent(
        AgentOptions(exports.local, source=SourceSpec("images", str(tmp_path)), frames=10, log_interval_s=0)
    )
    assert report.summary["completed"] == 3 and report.summary["lost"] == 0


def test_video_file_source(exports: Exports, tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2", reason="OpenCV (the video extra) is not installed")
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (48, 40))
    for i in range(6):
        writer.write(np.full((40, 48, 3), i * 30, np.uint8))
    writer.release()
    inputs: list[np.ndarray] = []
    report = run_agent(
        AgentOptions(exports.local, source=SourceSpec("video", str(path)), log_interval_s=0),
        lambda r: inputs.append(r.inputs["x"].copy()),
    )
    assert report.summary["completed"] == 6
    # grey frames of rising brightness, scaled to 0..1 (no preprocess entry: no mean/std)
    levels = [float(x.mean()) for x in inputs]
    assert levels == sorted(levels) and 0 <= levels[0] < 0.05 and 0.55 < levels[-1] <= 0.62
    assert inputs[0].shape == (1, 3, 32, 32) and inputs[0].dtype == np.float32


@pytest.mark.parametrize("head_thread", [True, False])
def test_sequential_captures_each_frame_after_the_previous_result(
    exports: Exports, server: ServerThread, head_thread: bool
) -> None:
    def run(sequential: bool) -> list[tuple[float, float]]:
        report = run_agent(
            AgentOptions(
                exports.int8,
                server=f"127.0.0.1:{server.port}",
                frames=30,
                client=ClientOptions(window=1),
                log_interval_s=0,
                head_thread=head_thread,
                sequential=sequential,
            )
        )
        assert report.summary["completed"] == 30
        assert report.info["sequential"] is sequential
        spans = [(f.captured, f.done) for f in sorted(report.frames, key=lambda f: f.id)]
        assert all(done is not None for _, done in spans)
        return spans  # type: ignore[return-value]

    spans = run(sequential=True)
    assert all(nxt[0] >= prev[1] for prev, nxt in itertools.pairwise(spans))
    # without it, window 1 still prepares the next frame while one is in flight
    spans = run(sequential=False)
    assert any(nxt[0] < prev[1] for prev, nxt in itertools.pairwise(spans))


def test_parallel_tail_instances_share_the_server_stage(exports: Exports) -> None:
    """With two tail instances the server's capacity counts both: each frame's share of the
    tail is divided by the ``tail_instances`` its reply reports."""
    from splitpipe.server import ServerOptions

    with ServerThread([exports.offload], ServerOptions(instances=2, max_batch=1)) as running:
        report = run_agent(
            AgentOptions(exports.offload, server=f"127.0.0.1:{running.port}", frames=60, log_interval_s=0)
        )
    s = report.summary
    assert s["completed"] == 60 and s["lost"] == 0
    remote = [r for r in report.frames if r.path == "remote"]
    assert {r.server["tail_instances"] for r in remote} == {2}
    for r in remote:
        want = (r.server["decode_us"] + r.server["tail_us"] / r.server["batch_size"] / 2) / 1e3
        assert r.server_ms() == pytest.approx(want)
    server_ms = float(np.mean([r.server_ms() for r in remote]))
    assert s["bound"]["stage_ms"]["server"] == pytest.approx(server_ms, abs=1e-4)
