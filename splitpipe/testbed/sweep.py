"""``splitpipe bench sweep``: the planner's predictions held against the emulated testbed.

For a model and a few link rates, on one testbed (docs/testbed.md):

1. the model is planned *on the testbed*: ``splitpipe plan ... --json`` runs inside the throttled
   device side and, at the same time, on the server side; their measured head, tail and codec
   times are what every later plan uses (``--device-from``, ``--server-from``);
2. per link, the rate is set, the link is measured, and the model is planned for the *measured*
   rate and round-trip time;
3. every split worth trying is exported once: the baselines (``local``; ``offload`` raw, and
   as JPEG where the input is a picture), each plan's Pareto candidates, the Pareto front of
   the split candidates among themselves (so that split points are measured even where a
   baseline beats them all), and the candidate each plan picks (lowest predicted latency);
4. one ``splitpipe serve`` process serves all of them on the server side; per link, for each
   export, ``splitpipe agent --sequential --window 1`` streams real pictures from the device side
   and reports each frame's end-to-end latency on the device's clock; with ``pipelined_window``
   each export is streamed again with that many frames in flight, for its throughput against
   the plan's predicted frames per second.

The result (:func:`run_sweep`) is a JSON document (``splitpipe-sweep``, version 1) with every
run's measured and predicted figures; :mod:`splitpipe.testbed.sweep_report` turns it into the
summary, the table and the plots. Nothing is fitted: predictions are the plans' as made before
any frame was streamed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from splitpipe.errors import SplitpipeError, check_output_dir, choices
from splitpipe.units import parse_rate

_LOGGER = logging.getLogger(__name__)

SWEEP_FORMAT = "splitpipe-sweep"
SWEEP_VERSION = 1
OBJECTIVE_NAMES = ("latency", "energy", "bytes", "memory", "throughput")
#: most frames of one pipelined run
MAX_PIPELINED_FRAMES = 400
#: run kinds, in table order
KINDS = ("local", "offload-raw", "offload-jpeg", "split")
#: the pictures streamed and calibrated on: scikit-learn's two sample photographs, cropped
SAMPLE_PHOTOS = ("china.jpg", "flower.jpg")

Log = Callable[[str], None]
#: how each side's plan times the model. The server times every tail as the model it serves
#: ("direct"): the segment times that "segments" scales to the whole model put 10-20 % too
#: little on resnet50's tails (their share of the fusion ONNX Runtime loses at the segment
#: boundaries is smaller than the heads'). The throttled device keeps "segments": timing 37
#: heads one by one there would take minutes.
SIDE_PROFILE = {"device": "segments", "server": "direct"}


@dataclass(frozen=True)
class SweepOptions:
    """One sweep. Rates in Mbit/s (as set on tbf), times in ms, the CPU share a fraction of a core."""

    model: str
    input_shape: tuple[int, ...] | None = None
    weights: str | None = None
    links_mbit: tuple[float, ...] = (2.0, 10.0, 50.0)
    rtt_ms: float = 20.0
    device_cpu: float = 0.25
    codec: str = "auto"
    max_error: float | None = None
    objectives: tuple[str, ...] = ("latency", "bytes")
    max_cut_tensors: int = 1
    #: frames per run (after the warm-up); None: chosen per run from its predicted latency
    frames: int | None = None
    min_frames: int = 8
    max_frames: int = 30
    #: with frames None: aim at about this much streaming per run
    run_seconds: float = 4.0
    #: frames streamed first and left out of the figures (first calls, first replies)
    warmup_frames: int = 1
    #: pictures to stream and to calibrate codecs on (default: crops of scikit-learn's samples)
    images: Path | None = None
    calibration_samples: int = 2
    #: results (sweep.json, plots, plans, agent reports, logs) go here; default
    #: ./sweep-<model>-<time>. The exports go to OUT/exports, removed at the end unless kept.
    out: Path | None = None
    keep_exports: bool = False
    name: str = "sweep"
    port: int = 8001
    #: also stream each export with this many frames in flight (the agent's --window) and hold
    #: its frames per second against the plan's prediction; None: sequential runs only
    pipelined_window: int | None = None

    def __post_init__(self) -> None:
        if not self.links_mbit:
            raise SplitpipeError("no link rates given; e.g. --links 2mbit,10mbit,50mbit")
        if len(set(self.links_mbit)) != len(self.links_mbit):
            raise SplitpipeError(f"link rates listed twice: {list(self.links_mbit)}")
        for o in self.objectives:
            if o not in OBJECTIVE_NAMES:
                raise choices("objective", o, OBJECTIVE_NAMES)
        if "latency" not in self.objectives:
            raise SplitpipeError("the sweep's objectives must include latency")
        if self.frames is not None and self.frames < 1:
            raise SplitpipeError(f"--frames must be at least 1, got {self.frames}")
        if not 1 <= self.min_frames <= self.max_frames:
            raise SplitpipeError(
                f"frame bounds must satisfy 1 <= min <= max, got {self.min_frames}, {self.max_frames}"
            )
        if not self.run_seconds > 0:
            raise SplitpipeError(f"seconds per run must be positive, got {self.run_seconds}")
        if self.warmup_frames < 0:
            raise SplitpipeError(f"warm-up frames must be >= 0, got {self.warmup_frames}")
        if self.pipelined_window is not None and self.pipelined_window < 2:
            raise SplitpipeError(
                f"--pipelined needs at least 2 frames in flight (1 is the sequential run), got {self.pipelined_window}"
            )
        if self.calibration_samples < 1:
            raise SplitpipeError(f"calibration samples must be at least 1, got {self.calibration_samples}")
        if self.images is not None and not Path(self.images).is_dir():
            raise SplitpipeError(f"images directory not found: {self.images}")
        if self.out is not None:
            check_output_dir(self.out, "--out", "the sweep's results")
        from splitpipe.partition.codecs import check_max_error

        check_max_error(self.codec, self.max_error)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("images", "out"):
            out[key] = str(out[key]) if out[key] is not None else None
        for key in ("input_shape", "links_mbit", "objectives"):
            out[key] = list(out[key]) if out[key] is not None else None
        return out


def model_stem(model: str) -> str:
    """A short name for a model spec: ``torchvision:resnet50`` -> ``resnet50``."""
    return model.rpartition(":")[2].rpartition("/")[2].removesuffix(".onnx") or "model"


def default_out(model: str) -> Path:
    return Path(f"sweep-{model_stem(model)}-{time.strftime('%Y%m%d-%H%M%S')}")


def parse_links(text: str) -> tuple[float, ...]:
    """``"2mbit,10mbit,50mbit"`` -> (2.0, 10.0, 50.0) Mbit/s."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise SplitpipeError(
            f"bad --links {text!r}; accepted: comma-separated rates such as 2mbit,10mbit,50mbit"
        )
    return tuple(parse_rate(p) for p in parts)


@dataclass
class RunSpec:
    """One configuration streamed at every link: a baseline or a split, exported once."""

    key: str
    kind: str
    split: int | str
    label: str
    codec: str
    export: Path | None = None
    #: why it is in the sweep, per link rate: "pareto", "candidate-front", "picked"
    reasons: dict[float, list[str]] = field(default_factory=dict)


# ----------------------------------------------------------------------------------- pictures
def write_pictures(folder: Path, height: int, width: int, count: int = 8) -> Path:
    """Crops of scikit-learn's sample photographs at the input's size, as BMP (raw pixels, as a
    camera delivers them: reading them costs the device next to nothing). Alternating the two
    photographs, so that the first two (what codecs are calibrated on) are one of each."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    folder.mkdir(parents=True, exist_ok=True)
    photos = [load_sample_image(name) for name in SAMPLE_PHOTOS]
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        # crops of 60-100 % of the short side, spread over the picture
        side = int(min(h, w) * (1.0 - 0.4 * ((i // 2) % 3) / 2))
        y = (h - side) * ((i // 2) % 3) // 2
        x = (w - side) * ((i * 3) % 5) // 4
        crop = Image.fromarray(photo[y : y + side, x : x + side])
        crop.resize((width, height), Image.Resampling.BILINEAR).save(folder / f"{i:02d}.bmp")
    return folder


def image_input(shape: Sequence[int], dtype: str) -> bool:
    """Whether the agent's ``images`` source can feed this input (float NCHW, 1 or 3 channels, batch 1)."""
    return len(shape) == 4 and shape[0] == 1 and shape[1] in (1, 3) and dtype.startswith("float")


# ----------------------------------------------------------------------------------- the sweep
class Sweep:
    """Runs one sweep; :meth:`run` returns the sweep JSON. Needs root (the testbed)."""

    def __init__(self, options: SweepOptions, log: Log | None = None, command: str | None = None) -> None:
        self.options = options
        self.log = log or (lambda line: _LOGGER.info("%s", line))
        self.command = command
        self._t0 = time.perf_counter()

    def _step(self, text: str) -> None:
        self.log(f"[{time.perf_counter() - self._t0:6.1f} s] {text}")

    def run(self) -> dict[str, Any]:
        from splitpipe.testbed.testbed import require_root

        require_root()
        o = self.options
        out = Path(o.out) if o.out is not None else default_out(o.model)
        out.mkdir(parents=True, exist_ok=True)
        try:
            return self._run(out.resolve())
        finally:
            if not o.keep_exports:
                shutil.rmtree(out / "exports", ignore_errors=True)

    # The sweep, top to bottom. Every process runs on the testbed and is stopped by its down().
    def _run(self, work: Path) -> dict[str, Any]:
        from splitpipe.partition.plan import PlanRequest, analyse
        from splitpipe.testbed import Testbed, TestbedOptions

        o = self.options
        load_before = os.getloadavg()
        timings: dict[str, float] = {}
        base = PlanRequest(
            model=o.model,
            input_shape=o.input_shape,
            weights=o.weights,
            codec=o.codec,
            max_error=o.max_error,
            calibration_samples=o.calibration_samples,
            objectives=o.objectives,
            max_cut_tensors=o.max_cut_tensors,
            window=o.pipelined_window or 4,
        )
        self._step(f"loading {o.model}")
        analysis = analyse(base)
        graph = analysis.graph
        inputs_info = graph.info(graph.inputs[0]) if len(graph.inputs) == 1 else None
        pictures = inputs_info is not None and image_input(inputs_info.shape, inputs_info.dtype.name)
        images: Path | None = None
        if pictures:
            assert inputs_info is not None
            images = (
                Path(o.images).resolve()
                if o.images
                else write_pictures(work / "images", inputs_info.shape[2], inputs_info.shape[3])
            )
        elif o.images:
            raise SplitpipeError(
                f"{o.model} has no single float NCHW picture input; --images applies to image models"
            )
        req = PlanRequest(
            **{
                **base.to_json(),
                "input_shape": o.input_shape,
                "objectives": o.objectives,
                "calibration_images": str(images) if images else None,
                "offload_codec": "jpeg" if pictures else "raw",
            }
        )
        stem = model_stem(o.model)

        tb = Testbed(
            TestbedOptions(
                name=o.name,
                rate_mbit=o.links_mbit[0],
                rtt_ms=o.rtt_ms,
                device_cpu=o.device_cpu,
                ports=(o.port,),
            )
        )
        result: dict[str, Any] = {
            "format": SWEEP_FORMAT,
            "version": SWEEP_VERSION,
            "command": self.command,
            "options": o.to_json(),
            "model": o.model,
            "input_shape": list(next(iter(analysis.loaded.input_shapes.values()))),
            "pictures": pictures,
            "images": str(images) if images else None,
            "work": str(work),
        }
        server: subprocess.Popen[Any] | None = None
        try:
            self._step(
                f"testbed {o.name} up: {o.links_mbit[0]:g} Mbit/s, RTT {o.rtt_ms:g} ms, device CPU {o.device_cpu:g}"
            )
            t = time.perf_counter()
            first = tb.up()
            assert first is not None
            self.log(f"         {_describe(first)}")
            result["testbed"] = {
                "delay_method": tb.delay_method,
                "device_cpu_share": first.device_cpu_share,
                "device_slowdown": first.device_slowdown,
                "first_measurement": first.to_dict(),
            }
            timings["testbed_up_s"] = time.perf_counter() - t

            # 1. plans measured on the device and on the server, at the same time (separate cores)
            t = time.perf_counter()
            self._step("planning on the device side (throttled) and on the server side, measured there")
            side_plans = {side: work / f"plan-{side}.json" for side in ("device", "server")}
            before_plans = CpuSnapshot.take(tb)
            procs = {
                side: self._start_plan(tb, side, req, path, work / f"plan-{side}.log")
                for side, path in side_plans.items()
            }
            exports: dict[str, RunSpec] = {}
            self._wait(procs["server"], "the plan on the server side", work / "plan-server.log", 900)
            timings["plan_server_s"] = time.perf_counter() - t
            self._wait(procs["device"], "the plan on the device side", work / "plan-device.log", 1800)
            timings["plan_device_s"] = time.perf_counter() - t
            result["side_plans"] = _side_plans(side_plans)
            result["side_plans"]["other_work"] = CpuSnapshot.take(tb).other_work_since(before_plans)
            self.log(
                "         whole model measured: device {:.1f} ms, server {:.1f} ms".format(
                    result["side_plans"]["device"]["whole_model_ms"],
                    result["side_plans"]["server"]["whole_model_ms"],
                )
            )
            # Exports only now: exporting verifies each split with ONNX Runtime, which would
            # compete with the side plans' measurements for the cores.
            t = time.perf_counter()
            baselines = [RunSpec("local", "local", "local", "all on the device", "none")]
            baselines.append(RunSpec("offload-raw", "offload-raw", "offload", "input sent as it is", "raw"))
            if pictures:
                baselines.append(
                    RunSpec("offload-jpeg", "offload-jpeg", "offload", "input sent as JPEG", "jpeg")
                )
            for spec in baselines:
                self._export(spec, req, analysis, None, work, stem)
                exports[spec.key] = spec
            trivial = self._trivial_exports(work, analysis, stem)
            timings["exports_s"] = time.perf_counter() - t

            # 1b. the per-frame overhead the stages leave out, measured once with a trivial export
            t = time.perf_counter()
            source = ["images", str(images)] if images else ["synthetic"]
            overhead = self._measure_overhead(tb, trivial, source, first, work)
            result["overhead"] = overhead
            timings["overhead_s"] = time.perf_counter() - t
            self._step(
                f"per-frame overhead measured with a trivial export: {overhead['remote_ms']:.2f} ms when sending, "
                f"{overhead['local_ms']:.2f} ms local"
            )
            req = replace(req, overhead_ms=overhead["remote_ms"], local_overhead_ms=overhead["local_ms"])
            if overhead["pipelined"]:
                req = replace(req, device_overhead_ms=overhead["pipelined"]["device_ms"])
                self._step(
                    f"pipelined, the agent's own device time per frame: {overhead['pipelined']['device_ms']:.2f} ms "
                    f"(the trivial export's interval {overhead['pipelined']['interval_ms']:.2f} ms)"
                )

            # 2. per link: measure it, plan for what was measured
            t = time.perf_counter()
            links: list[dict[str, Any]] = []
            plans = {}
            for rate in o.links_mbit:
                m = first if rate == o.links_mbit[0] else self._set_link(tb, rate)
                link_text = f"{m.uplink_mbit:.4f}mbit,{m.rtt_ms:.3f}ms"
                plan = self._plan(req, analysis, link_text, side_plans, work / f"plan-{rate:g}mbit.json")
                plans[rate] = plan
                links.append(
                    {
                        "rate_set_mbit": rate,
                        "rtt_set_ms": o.rtt_ms,
                        "link_planned": m.to_dict(),
                        "plan": {
                            "file": str(work / f"plan-{rate:g}mbit.json"),
                            "link": plan.link,
                            "best": plan.best,
                        },
                    }
                )
                self._step(
                    f"{rate:g} Mbit/s: measured {m.uplink_mbit:.2f} Mbit/s, RTT {m.rtt_ms:.1f} ms; "
                    f"planned, picks {_option_key(plan.best['latency'], pictures)} "
                    f"(predicted {plan.option(plan.best['latency']).e2e_ms:.1f} ms)"
                )
            timings["plans_per_link_s"] = time.perf_counter() - t

            # 3. the splits worth measuring, exported once each
            t = time.perf_counter()
            splits = _splits_to_run(plans, pictures)
            for key, (split_id, reasons) in splits.items():
                if key in exports:
                    exports[key].reasons = reasons
                    continue
                plan = next(plans[r] for r in o.links_mbit if r in reasons)
                opt = plan.option(split_id)
                spec = RunSpec(key, "split", split_id, opt.label, opt.codec, reasons=reasons)
                self._export(spec, req, analysis, plan, work, stem)
                exports[key] = spec
            timings["exports_s"] += time.perf_counter() - t
            self._step(
                f"exported {len(exports)} configurations: {', '.join(exports)}"
                f" ({timings['exports_s']:.0f} s in all)"
            )
            result["exports"] = {
                k: {
                    "dir": str(s.export),
                    "kind": s.kind,
                    "split": s.split,
                    "label": s.label,
                    "codec": s.codec,
                    "reasons": {f"{r:g}": v for r, v in s.reasons.items()},
                }
                for k, s in exports.items()
            }

            # 4. one server for all of them; per link, the agent on each
            served = [s.export for s in exports.values() if s.kind != "local" and s.export]
            server = self._start_server(tb, served, work / "serve.log")
            t = time.perf_counter()
            for entry, rate in zip(links, o.links_mbit, strict=True):
                m = self._set_link(tb, rate) if len(o.links_mbit) > 1 else tb.measure(cpu=False)
                entry["link_run"] = m.to_dict()
                plan = plans[rate]
                runs = []
                for spec in exports.values():
                    predicted = _prediction(plan, spec)
                    frames = self._frames(predicted["e2e_ms"])
                    run = self._stream(
                        tb, spec, source, frames, work / "reports" / f"{rate:g}mbit-{spec.key}.json"
                    )
                    run["predicted"] = predicted
                    run["in_plan"] = {
                        "pareto": _pareto(plan, spec, pictures),
                        "picked": _option_key(plan.best["latency"], pictures) == spec.key,
                        "reasons": spec.reasons.get(rate, []),
                    }
                    if run.get("measured"):
                        meas = run["measured"]["e2e_ms"]["p50"]
                        run["error"] = (predicted["e2e_ms"] - meas) / meas
                        self.log(
                            f"         {spec.key:>14}: {frames:3d} frames, measured p50 {meas:8.1f} ms "
                            f"p90 {run['measured']['e2e_ms']['p90']:8.1f} ms, predicted {predicted['e2e_ms']:8.1f} ms "
                            f"({run['error']:+.1%})"
                        )
                    if o.pipelined_window:
                        run["pipelined"] = self._pipelined(tb, spec, source, predicted, work, rate)
                    runs.append(run)
                entry["runs"] = runs
                entry["picked"] = _option_key(plan.best["latency"], pictures)
            timings["runs_s"] = time.perf_counter() - t
            result["links"] = links
        finally:
            if server is not None:
                _stop(server)
            with contextlib.suppress(Exception):
                tb.down()
            self._step(f"testbed {o.name} down")
        from splitpipe.testbed.sweep_report import summarize

        result["timings"] = timings
        result["machine"] = {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_before": list(load_before),
            "load_after": list(os.getloadavg()),
        }
        result["duration_s"] = time.perf_counter() - self._t0
        result["summary"] = summarize(result)
        return result

    # ------------------------------------------------------------------------------- pieces
    def _python(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "splitpipe", *args]

    def _start_plan(self, tb: Any, side: str, req: Any, out: Path, log: Path) -> subprocess.Popen[Any]:
        argv = self._python("plan", req.model, "--json", str(out), *_plan_arguments(req))
        argv += ["--profile", SIDE_PROFILE[side]]
        with log.open("wb") as f:
            proc: subprocess.Popen[Any] = tb.popen(side, argv, stdout=f, stderr=subprocess.STDOUT, env=_env())
        return proc

    def _wait(self, proc: subprocess.Popen[Any], what: str, log: Path, timeout_s: float) -> None:
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise SplitpipeError(f"{what} took more than {timeout_s:.0f} s; see {log}") from None
        if code != 0:
            raise SplitpipeError(f"{what} failed (exit code {code}): {_last_line(log)}")

    def _set_link(self, tb: Any, rate: float) -> Any:
        tb.set_rate(rate, measure=False)
        return tb.measure(cpu=False)  # the CPU share was measured at up; it does not change

    def _plan(self, req: Any, analysis: Any, link: str, side_plans: dict[str, Path], path: Path) -> Any:
        from splitpipe.partition.plan import PlanRequest, make_plan

        request = PlanRequest(
            **{
                **req.to_json(),
                "input_shape": req.input_shape,
                "objectives": req.objectives,
                "link": link,
                "device_from": str(side_plans["device"]),
                "server_from": str(side_plans["server"]),
            }
        )
        plan = make_plan(request, analysis=analysis)
        plan.write(path)
        return plan

    def _export(self, spec: RunSpec, req: Any, analysis: Any, plan: Any, work: Path, stem: str) -> None:
        from splitpipe.partition.export import export_split

        out = work / "exports" / spec.key
        export_req = req
        if spec.kind == "offload-raw":
            export_req = replace(req, offload_codec="raw")
        if plan is None:  # a baseline: its manifest's predictions come from a quick analytic plan
            export_req = replace(
                export_req, profile_mode="analytic", calibration_samples=1, codec="raw", max_error=None
            )
        codec = None if spec.kind == "split" else ("raw" if spec.codec == "none" else spec.codec)
        export_split(
            export_req, spec.split, out, plan=plan, analysis=analysis, name=f"{stem}-{spec.key}", codec=codec
        )
        spec.export = out

    def _trivial_exports(self, work: Path, analysis: Any, stem: str) -> dict[str, RunSpec]:
        """A model with the real one's inputs that does next to nothing (a mean, then a negation),
        exported local and split in two: what the agent, gRPC and the server cost per frame
        beyond the stages a plan models. Its manifests get the real model's preprocessing, so
        that capturing a frame costs what it costs for the real model."""
        from splitpipe.partition.export import export_split
        from splitpipe.partition.plan import PlanRequest, analyse

        path = work / "overhead" / "trivial.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_trivial_model(analysis.graph, path)
        req = PlanRequest(model=str(path), profile_mode="analytic", calibration_samples=1)
        a = analyse(req)
        cut = next(c for c in a.cuts if c.tensors == (TRIVIAL_CUT,))
        specs = {
            "local": RunSpec("overhead-local", "local", "local", "trivial model, all on the device", "none"),
            "remote": RunSpec("overhead-remote", "split", cut.id, "trivial model, split", "raw"),
        }
        for spec in specs.values():
            out = work / "exports" / spec.key
            export_split(req, spec.split, out, analysis=a, name=f"{stem}-{spec.key}", codec="raw")
            manifest = json.loads((out / "manifest.json").read_text())
            manifest["preprocess"] = analysis.loaded.preprocess
            (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            spec.export = out
        return specs

    def _measure_overhead(
        self, tb: Any, trivial: dict[str, RunSpec], source: list[str], link: Any, work: Path
    ) -> dict[str, Any]:
        """Run the trivial exports (their own server, stopped afterwards) at the first link; the
        overhead is each frame's end-to-end time minus everything a plan models, measured stage
        by stage (head, encode, decode, tail) and on the link (RTT, bytes over the rate)."""
        remote = trivial["remote"]
        assert remote.export is not None
        server = self._start_server(tb, [remote.export], work / "overhead" / "serve.log")
        try:
            runs = {
                kind: self._stream(tb, spec, source, OVERHEAD_FRAMES, work / "overhead" / f"{kind}.json")
                for kind, spec in trivial.items()
            }
            if self.options.pipelined_window:
                # the device's own work per frame when frames are pipelined: the trivial export's
                # steady interval between frames, with a window wide enough that only the
                # device's time (capture, the agent's messages) can hold it back
                runs["pipelined"] = self._stream(
                    tb, remote, source, PIPELINED_OVERHEAD_FRAMES,
                    work / "overhead" / "remote-pipelined.json", window=PIPELINED_OVERHEAD_WINDOW,
                )  # fmt: skip
        finally:
            if server is not None:
                _stop(server)
        for run in runs.values():
            if run.get("failure"):
                raise SplitpipeError(f"measuring the per-frame overhead failed: {run['failure']}")
        reply_bytes = _output_bytes(remote.export)
        local, remote_frames = (
            _frames_of(runs["local"]["report"], self.options.warmup_frames),
            _frames_of(runs["remote"]["report"], self.options.warmup_frames),
        )
        local_ms = [f["e2e_ms"] - f["head_ms"] for f in local]
        remote_ms = [
            f["e2e_ms"] - f["head_ms"] - f["encode_ms"]
            - (f["server"]["decode_us"] + f["server"]["tail_us"]) / 1e3
            - link.rtt_ms - (f["tx_bytes"] + reply_bytes) * 8 / (link.uplink_mbit * 1e3)
            for f in remote_frames
        ]  # fmt: skip
        device: dict[str, Any] = {}
        if "pipelined" in runs:
            report = json.loads(Path(runs["pipelined"]["report"]).read_text())
            skip = self.options.warmup_frames + PIPELINED_OVERHEAD_WINDOW
            fps = steady_fps(report, skip)
            if not fps:
                raise SplitpipeError("measuring the pipelined per-frame overhead failed: no steady frames")
            frames = _frames_of(runs["pipelined"]["report"], skip)
            stages = _percentiles([f["head_ms"] + f["encode_ms"] for f in frames])["p50"]
            device = {
                "device_ms": max(1e3 / fps - stages, 0.0),
                "interval_ms": 1e3 / fps,
                "head_encode_ms_p50": stages,
                "window": PIPELINED_OVERHEAD_WINDOW,
                "frames": PIPELINED_OVERHEAD_FRAMES,
                "how": f"the trivial export with {PIPELINED_OVERHEAD_WINDOW} frames in flight: its steady "
                "interval between results less its head and encode (p50)",
            }
        return {
            "remote_ms": _percentiles(remote_ms)["p50"],
            "local_ms": _percentiles(local_ms)["p50"],
            "pipelined": device or None,
            "remote": _percentiles(remote_ms),
            "local": _percentiles(local_ms),
            "capture_ms_p50": _percentiles([f["capture_ms"] for f in remote_frames + local])["p50"],
            "link": {
                "uplink_mbit": link.uplink_mbit,
                "rtt_ms": link.rtt_ms,
                "rate_set_mbit": link.rate_set_mbit,
            },
            "frames": OVERHEAD_FRAMES,
            "reports": {kind: run["report"] for kind, run in runs.items()},
            "how": "median over the frames of a trivial export (same input, same source) of the end-to-end "
            "time minus head, encode, decode, tail (measured) and RTT + bytes / rate (the link as measured)",
            "measured": True,
        }

    def _start_server(self, tb: Any, dirs: list[Path], log: Path) -> subprocess.Popen[Any] | None:
        if not dirs:
            return None
        o = self.options
        argv = self._python(
            "serve", *map(str, dirs), "--host", tb.server_listen_address(o.port).rpartition(":")[0],
            "--port", str(o.port), "--log-interval", "0", "--max-batch", "1",
        )  # fmt: skip
        self._step(f"starting splitpipe serve on the server side with {len(dirs)} export(s)")
        err = log.open("wb")
        proc: subprocess.Popen[Any] = tb.popen(
            "server", argv, stdout=subprocess.PIPE, stderr=err, env=_env(), text=True
        )
        err.close()
        line = _read_line(proc, 300)
        if "listening on" not in line:
            proc.kill()
            raise SplitpipeError(f"splitpipe serve did not start: {line.strip() or _last_line(log)}")
        return proc

    def _frames(self, predicted_ms: float) -> int:
        o = self.options
        if o.frames is not None:
            return o.frames
        want = o.run_seconds * 1e3 / max(predicted_ms, 1e-3)
        return int(min(o.max_frames, max(o.min_frames, math.ceil(want))))

    def _pipelined(
        self, tb: Any, spec: RunSpec, source: list[str], predicted: dict[str, Any], work: Path, rate: float
    ) -> dict[str, Any]:
        """The export again with ``pipelined_window`` frames in flight: frames per second,
        measured in the steady state, against the plan's prediction."""
        o = self.options
        assert o.pipelined_window is not None
        want = o.run_seconds * max(float(predicted["fps"]), 1e-3)
        frames = int(min(MAX_PIPELINED_FRAMES, max(4 * o.pipelined_window, math.ceil(want))))
        report = work / "reports" / f"{rate:g}mbit-{spec.key}-pipelined.json"
        run = self._stream(tb, spec, source, frames, report, window=o.pipelined_window)
        out: dict[str, Any] = {
            "window": o.pipelined_window,
            "frames": frames,
            "predicted_fps": float(predicted["fps"]),
            "predicted_stage_ms": float(predicted["stage_ms"]),
        }
        if run.get("failure"):
            out["failure"] = run["failure"]
            return out
        fps = steady_fps(json.loads(report.read_text()), o.warmup_frames + o.pipelined_window)
        out.update(measured_fps=fps, report=str(report), bound=run["measured"].get("bound"))
        if fps:
            out["error"] = (out["predicted_fps"] - fps) / fps
            self.log(
                f"         {spec.key:>14}: pipelined (window {o.pipelined_window}) {fps:8.2f} fps, "
                f"predicted {out['predicted_fps']:8.2f} fps ({out['error']:+.1%})"
            )
        return out

    def _stream(
        self, tb: Any, spec: RunSpec, source: list[str], frames: int, report: Path, window: int = 1
    ) -> dict[str, Any]:
        """One agent run on the device side: ``frames`` after the warm-up, sequential (window
        1, each frame captured after the previous result) or with ``window`` frames in flight."""
        o = self.options
        assert spec.export is not None
        report.parent.mkdir(parents=True, exist_ok=True)
        total = frames + o.warmup_frames
        argv = self._python(
            "agent", str(spec.export), "--source", *source, "--loop", "--frames", str(total),
            "--window", str(window), "--report", str(report), "--log-interval", "0",
            "--connect-timeout", "60",
        )  # fmt: skip
        if window == 1:
            argv.append("--sequential")
        if spec.kind != "local":
            argv += ["--server", tb.server_address(o.port)]
        log = report.with_suffix(".log")
        run: dict[str, Any] = {
            "key": spec.key,
            "kind": spec.kind,
            "split": spec.split,
            "label": spec.label,
            "codec": spec.codec,
            "frames": frames,
            "warmup_frames": o.warmup_frames,
            "report": str(report),
        }
        before = CpuSnapshot.take(tb)
        with log.open("wb") as f:
            proc = tb.popen("device", argv, stdout=f, stderr=subprocess.STDOUT, env=_env())
        try:
            code = proc.wait(timeout=120 + 30 * total)
            run["other_work"] = CpuSnapshot.take(tb).other_work_since(before)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            run["failure"] = f"the agent did not finish in {120 + 30 * total} s; see {log}"
            return run
        if code != 0 or not report.is_file():
            run["failure"] = f"the agent failed (exit code {code}): {_last_line(log)}"
            self.log(f"         {spec.key:>14}: {run['failure']}")
            return run
        run["measured"] = measured_figures(json.loads(report.read_text()), o.warmup_frames)
        return run


# ----------------------------------------------------------------------------------- helpers
@dataclass(frozen=True)
class CpuSnapshot:
    """CPU time of the whole machine and of the testbed's two cgroups, to tell how much other
    work (anything outside the device and server groups: other people's jobs, and the delay
    relay) ran beside a run. Shared machines drift; the sweep says when they did."""

    wall_s: float
    busy_s: float
    ours_s: float
    load1: float

    @classmethod
    def take(cls, tb: Any) -> CpuSnapshot:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        ticks = [int(x) for x in fields]
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        # guest time is counted in user time already
        busy = (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")
        ours = sum(tb.group(side).usage_ns() for side in ("device", "server")) / 1e9
        return cls(time.monotonic(), busy, ours, os.getloadavg()[0])

    def other_work_since(self, before: CpuSnapshot) -> dict[str, float]:
        wall = max(self.wall_s - before.wall_s, 1e-6)
        other = (self.busy_s - before.busy_s) - (self.ours_s - before.ours_s)
        return {"cores": max(other, 0.0) / wall, "load1": self.load1, "seconds": wall, "measured": True}


#: the tensor the trivial model is cut at, and how many frames measure the overhead
TRIVIAL_CUT = "pooled"
OVERHEAD_FRAMES = 20
#: the trivial export pipelined: frames, and frames in flight (wide, so that the device binds)
PIPELINED_OVERHEAD_FRAMES = 300
PIPELINED_OVERHEAD_WINDOW = 16


def write_trivial_model(graph: Any, path: Path) -> None:
    """An ONNX model with ``graph``'s inputs: each averaged to one number (``ReduceMean``), the
    numbers joined (``pooled``, where it is cut), negated (the output)."""
    import onnx
    from onnx import TensorProto, helper

    from splitpipe.partition.load import IR_VERSION, OPSET

    nodes, inputs, means = [], [], []
    for i, name in enumerate(graph.inputs):
        info = graph.info(name)
        elem = helper.np_dtype_to_tensor_dtype(info.dtype)
        inputs.append(helper.make_tensor_value_info(name, elem, list(info.shape)))
        x = name
        if info.dtype.kind != "f":
            nodes.append(helper.make_node("Cast", [name], [f"cast{i}"], to=TensorProto.FLOAT))
            x = f"cast{i}"
        flat = TRIVIAL_CUT if len(graph.inputs) == 1 else f"flat{i}"
        nodes.append(helper.make_node("ReduceMean", [x], [f"mean{i}"], keepdims=1))
        nodes.append(helper.make_node("Flatten", [f"mean{i}"], [flat], axis=1))
        means.append(flat)
    if len(means) > 1:
        nodes.append(helper.make_node("Concat", means, [TRIVIAL_CUT], axis=1))
    nodes.append(helper.make_node("Neg", [TRIVIAL_CUT], ["out"]))
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, len(means)])
    model = helper.make_model(
        helper.make_graph(nodes, "trivial", inputs, [out]),
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))


def _frames_of(report: str | Path, warmup: int) -> list[dict[str, Any]]:
    frames = sorted(json.loads(Path(report).read_text())["frames"], key=lambda f: f["id"])[warmup:]
    return [f for f in frames if f.get("error") is None and f.get("e2e_ms") is not None]


def _output_bytes(export: Path) -> int:
    import numpy as np

    manifest = json.loads((export / "manifest.json").read_text())
    return sum(
        int(np.prod([d or 1 for d in t["shape"]])) * np.dtype(t["dtype"]).itemsize
        for t in manifest["outputs"]
    )


def _plan_arguments(req: Any) -> list[str]:
    """The CLI arguments of ``splitpipe plan`` that reproduce ``req`` (but its link and sides)."""
    args = ["--codec", req.codec, "--offload-codec", req.offload_codec]
    args += ["--calibration-samples", str(req.calibration_samples)]
    args += ["--objectives", ",".join(req.objectives), "--max-cut-tensors", str(req.max_cut_tensors)]
    if req.input_shape:
        args += ["--input-shape", ",".join(map(str, req.input_shape))]
    if req.weights:
        args += ["--weights", str(req.weights)]
    if req.max_error is not None:
        args += ["--max-error", repr(req.max_error)]
    if req.calibration_images:
        args += ["--calibration-images", req.calibration_images]
    return args


def _env() -> dict[str, str]:
    # the children's own INFO lines would fill the logs; warnings and errors stay
    return {**os.environ, "SPLITPIPE_LOG_LEVEL": "WARNING"}


def _last_line(log: Path) -> str:
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no output"
    return lines[-1].strip() if lines else "no output"


def _read_line(proc: subprocess.Popen[Any], timeout_s: float) -> str:
    """The first line of a child's stdout, or '' when it exits or ``timeout_s`` passes first."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            return ""
    return str(proc.stdout.readline())


def _stop(proc: subprocess.Popen[Any]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _describe(m: Any) -> str:
    return (
        f"measured: uplink {m.uplink_mbit:.2f} Mbit/s, downlink {m.downlink_mbit:.2f} Mbit/s, "
        f"RTT {m.rtt_ms:.1f} ms, device CPU {m.device_cpu_share:.3f} of a core ({m.device_slowdown:.2f}x slower)"
    )


def _side_plans(paths: dict[str, Path]) -> dict[str, Any]:
    out = {}
    for side, path in paths.items():
        data = json.loads(path.read_text())
        key = "whole_model_device_ms" if side == "device" else "whole_model_server_ms"
        out[side] = {
            "file": str(path),
            "whole_model_ms": data["profiling"][key],
            "method": data[side]["method"],
            "planning_s": data["planning_s"],
        }
    return out


def _option_key(option_id: int | str, pictures: bool) -> str:
    """Run key of a plan option: local, offload-jpeg (pictures) or offload-raw, s<ID>."""
    if option_id == "local":
        return "local"
    if option_id == "offload":
        return "offload-jpeg" if pictures else "offload-raw"
    return f"s{option_id}"


def _splits_to_run(
    plans: dict[float, Any], pictures: bool
) -> dict[str, tuple[int | str, dict[float, list[str]]]]:
    """Per run key: the option id, and why it is measured at each link (pareto, front, picked)."""
    from splitpipe.partition.pareto import pareto_mask

    out: dict[str, tuple[int | str, dict[float, list[str]]]] = {}

    def add(option_id: int | str, rate: float, why: str) -> None:
        key = _option_key(option_id, pictures)
        entry = out.setdefault(key, (option_id, {}))
        entry[1].setdefault(rate, []).append(why)

    for rate, plan in plans.items():
        for opt in plan.options():
            if opt.pareto:
                add(opt.id, rate, "pareto")
        objectives = tuple(plan.objectives)
        front = pareto_mask([c.objective_values(objectives) for c in plan.candidates])
        for cand, on in zip(plan.candidates, front, strict=True):
            if on:
                add(cand.id, rate, "candidate-front")
        add(plan.best["latency"], rate, "picked")
    return out


def _pareto(plan: Any, spec: RunSpec, pictures: bool) -> bool | None:
    """Whether the plan marks the run's option Pareto-optimal; None for the raw offload of a
    picture model, which the plan (offloading as JPEG) does not hold as an option."""
    if spec.kind == "offload-raw" and pictures:
        return None
    return bool(plan.option(spec.split).pareto)


_STAGES = ("head_ms", "encode_ms", "tx_ms", "rtt_ms", "decode_ms", "tail_ms", "reply_ms")


def _prediction(plan: Any, spec: RunSpec) -> dict[str, Any]:
    """The plan's figures for a run. The raw offload, where the plan's offload baseline is the
    JPEG one, is the same option with the input's own bytes and no codec, through the planner's
    cost function (``partition.cost.predict``), for the same link."""
    from splitpipe.partition.cost import Link, Stages, predict

    opt = plan.option(spec.split)
    figures: dict[str, Any] = {
        k: float(getattr(opt, k)) for k in ("e2e_ms", *_STAGES, "overhead_ms", "stage_ms", "fps")
    }
    figures.update(tx_bytes=int(opt.tx_bytes), reply_bytes=int(opt.reply_bytes), codec=opt.codec)
    figures["codec_error"] = float(opt.codec_error)
    figures["how"] = "the plan's option"
    if spec.kind == "offload-raw" and opt.codec != "raw":
        raw_bytes = sum(int(t["bytes"]) for t in opt.tensors)
        stages = Stages(0.0, 0.0, raw_bytes, 0.0, opt.tail_ms, opt.reply_bytes)
        link = Link(plan.link["bandwidth_mbps"], plan.link["rtt_ms"])
        req = plan.request
        times = predict(stages, link, opt.overhead_ms, req.window, req.device_overhead_ms)
        figures.update(times, tx_bytes=raw_bytes, encode_ms=0.0, decode_ms=0.0, codec="raw", codec_error=0.0)
        figures["how"] = (
            "the plan's offload option with the raw input bytes and no codec (partition.cost.predict)"
        )
    figures["estimated"] = True
    return figures


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    import numpy as np

    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {}
    return {
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "mean": float(a.mean()),
        "min": float(a.min()),
        "max": float(a.max()),
        "n": int(a.size),
    }


def steady_fps(report: dict[str, Any], skip: int) -> float | None:
    """Completed frames per second in a run's steady state: the first ``skip`` frames (the
    warm-up, and the window filling) left out, frames over the time between the first and the
    last of the others' results, on the device's clock."""
    frames = sorted(report["frames"], key=lambda f: f["id"])[skip:]
    done = sorted(
        f["captured_s"] + f["e2e_ms"] / 1e3
        for f in frames
        if f.get("e2e_ms") is not None and "error" not in f
    )
    if len(done) < 2 or done[-1] <= done[0]:
        return None
    return (len(done) - 1) / (done[-1] - done[0])


def measured_figures(report: dict[str, Any], warmup: int) -> dict[str, Any]:
    """A run's measured figures from its agent report, leaving out the first ``warmup`` frames."""
    frames = sorted(report["frames"], key=lambda f: f["id"])[warmup:]
    ok = [f for f in frames if f.get("error") is None and f.get("e2e_ms") is not None]
    s = report["summary"]

    def p50(key: str, frames_: list[dict[str, Any]] = ok) -> float | None:
        values = [f[key] for f in frames_ if f.get(key) is not None]
        return _percentiles(values)["p50"] if values else None

    server = [f["server"] for f in ok if f.get("server")]
    e2e = [f["e2e_ms"] for f in ok]
    out: dict[str, Any] = {
        "e2e_ms": _percentiles(e2e),
        # sequential frames: one at a time, so frames per second is 1 / mean latency
        "fps": len(e2e) / (sum(e2e) / 1e3) if e2e else None,
        "bytes_per_frame": _percentiles([f["tx_bytes"] for f in ok]).get("p50", 0.0) if ok else None,
        "payload_bytes_per_frame": _percentiles([f["payload_bytes"] for f in ok]).get("p50", 0.0)
        if ok
        else None,
        "stages_p50_ms": {
            "capture": p50("capture_ms"),
            "head": p50("head_ms"),
            "encode": p50("encode_ms"),
            "rtt": p50("rtt_ms"),
            "network": p50("network_ms"),
            "server_total": _percentiles([x["total_us"] / 1e3 for x in server]).get("p50")
            if server
            else None,
            "server_decode": _percentiles([x["decode_us"] / 1e3 for x in server]).get("p50")
            if server
            else None,
            "server_tail": _percentiles([x["tail_us"] / 1e3 for x in server]).get("p50") if server else None,
        },
        "network_ms": _percentiles([f["network_ms"] for f in ok if f.get("network_ms") is not None]),
        "completed": len(ok),
        "failed": sum(1 for f in frames if f.get("error") is not None),
        "lost": s.get("lost", 0),
        "resent": s.get("resent", 0),
        "bound": s.get("bound"),
        "measured": True,
    }
    return out


def run_sweep(options: SweepOptions, log: Log | None = None, command: str | None = None) -> dict[str, Any]:
    """Run a sweep on a fresh testbed (root) and return its JSON document."""
    return Sweep(options, log, command).run()


__all__ = [
    "KINDS",
    "SWEEP_FORMAT",
    "SWEEP_VERSION",
    "RunSpec",
    "Sweep",
    "SweepOptions",
    "image_input",
    "measured_figures",
    "parse_links",
    "run_sweep",
    "steady_fps",
    "write_pictures",
]
