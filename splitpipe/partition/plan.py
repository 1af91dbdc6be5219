"""A plan: every cut of a model with its predicted cost, the two baselines, and the Pareto front.

:func:`make_plan` is a pure function of a :class:`PlanRequest` (plus the machine it measures
on); the request is stored in the plan's JSON, so every plan can be re-run from its file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from splitpipe.devices.profile import DeviceProfile, load_profile
from splitpipe.errors import SplitpipeError, choices
from splitpipe.partition.codecs import CutCodec, check_codec_name, check_max_error, codec_for_cut
from splitpipe.partition.cost import (
    Link,
    Stages,
    device_energy_mj,
    energy_source,
    parse_link,
    predict,
)
from splitpipe.partition.cuts import Cut, find_cuts
from splitpipe.partition.flops import peak_activation_bytes, total_flops, weight_bytes
from splitpipe.partition.graph import Graph, random_feed
from splitpipe.partition.load import LoadedModel, load_model
from splitpipe.partition.pareto import pareto_mask
from splitpipe.partition.profile import MeasureOptions, Progress, Timings, analytic, measure, probe

_LOGGER = logging.getLogger(__name__)

PLAN_FORMAT = "splitpipe-plan"
PLAN_VERSION = 1
#: objective name -> the option field it minimises
OBJECTIVES = {
    "latency": "e2e_ms",
    "energy": "device_energy_mj",
    "bytes": "tx_bytes",
    "memory": "head_mem_bytes",
    "throughput": "frame_interval_ms",
}
DEFAULT_OBJECTIVES = ("latency", "bytes", "energy")
PROFILE_MODES = ("segments", "direct", "analytic")


@dataclass(frozen=True)
class PlanRequest:
    """Everything a plan depends on; stored in the plan JSON so the plan can be reproduced."""

    model: str
    input_shape: tuple[int, ...] | None = None
    weights: str | None = None
    device: str = "local"
    server: str = "local"
    link: str = "20mbit,10ms"
    codec: str = "raw"
    #: for codec "auto": the largest relative L2 error a codec may add (default 0.01)
    max_error: float | None = None
    #: random inputs whose cut tensors the codec is measured (and, for auto, chosen) on
    calibration_samples: int = 2
    #: a folder of pictures to use instead of random inputs (the first ``calibration_samples``
    #: in name order, preprocessed as the agent's ``images`` source does): codec bytes and
    #: errors, JPEG's above all, mean little on noise
    calibration_images: str | None = None
    #: how the offload baseline sends the input: raw (as it is), or a codec such as jpeg for images
    offload_codec: str = "raw"
    #: plan JSONs measured on the device / on the server: their head / tail (and encode / decode)
    #: times replace this machine's (profile on the real hardware, plan anywhere)
    device_from: str | None = None
    server_from: str | None = None
    #: per-frame cost outside the modelled stages (capturing the frame, building and parsing
    #: messages, gRPC on both ends, hand-offs between threads), added to the e2e_ms of options
    #: that send and, separately, of local; measured by ``splitpipe bench sweep`` with a trivial
    #: export on the testbed
    overhead_ms: float = 0.0
    local_overhead_ms: float = 0.0
    #: the agent's own device time per frame beyond head and encode when frames are pipelined
    #: (capturing, preprocessing, the messages; it shares the device with the head), added to
    #: the device stage of options that send; measured by ``splitpipe bench sweep --pipelined``
    device_overhead_ms: float = 0.0
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES
    #: frames in flight of a pipelined agent (its ``--window``), for the predicted frames/s
    window: int = 4
    max_cut_tensors: int = 1
    threads: int = 1
    profile_mode: str = "segments"
    repeats: int = 5
    warmup: int = 2

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["input_shape"] = list(self.input_shape) if self.input_shape else None
        out["objectives"] = list(self.objectives)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PlanRequest:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SplitpipeError(f"unknown plan request field(s) {unknown}; accepted: {sorted(known)}")
        kwargs = dict(data)
        for f in fields(cls):
            default = "" if f.default is MISSING else f.default  # the model spec, a string
            if f.name in kwargs and not _of_type(kwargs[f.name], default):
                raise SplitpipeError(
                    f"plan request field {f.name!r} must be {_kind(default)}, got {kwargs[f.name]!r}"
                )
        for name, kind in _OPTIONAL_FIELDS.items():
            if kwargs.get(name) is not None and not _of_type(kwargs[name], kind()):
                raise SplitpipeError(
                    f"plan request field {name!r} must be {_kind(kind())} or null, got {kwargs[name]!r}"
                )
        shape = kwargs.get("input_shape")
        if shape is not None and not (
            isinstance(shape, list)
            and shape
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
        ):
            raise SplitpipeError(
                f"plan request field 'input_shape' must be a list of positive integers or null, got {shape!r}"
            )
        if shape:
            kwargs["input_shape"] = tuple(shape)
        if "objectives" in kwargs:
            kwargs["objectives"] = tuple(kwargs["objectives"])
        return cls(**kwargs)


#: request fields that may be null (default None), and what they are otherwise
_OPTIONAL_FIELDS: dict[str, type] = {
    "weights": str,
    "max_error": float,
    "calibration_images": str,
    "device_from": str,
    "server_from": str,
}


def _of_type(value: Any, default: Any) -> bool:
    """``value`` has the type of a field whose default is ``default`` (None: any, or None)."""
    if default is None or value is None:
        return default is None
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, tuple):
        return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    return isinstance(value, type(default))


def _kind(default: Any) -> str:
    names = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        tuple: "a list of strings",
    }
    return names.get(type(default), type(default).__name__)


@dataclass
class Option:
    """One way to run the model: a split candidate, or a baseline (``local``, ``offload``)."""

    id: int | str
    label: str
    tensors: list[dict[str, Any]]
    codec: str
    tx_bytes: int
    head_ms: float
    encode_ms: float
    tx_ms: float
    rtt_ms: float
    decode_ms: float
    tail_ms: float
    reply_ms: float
    e2e_ms: float
    device_energy_mj: float
    head_mem_bytes: int
    head_flops: int
    reply_bytes: int
    #: relative L2 error the codec adds to the cut tensors (worst calibration sample)
    codec_error: float = 0.0
    #: the request's per-frame overhead (``overhead_ms`` or ``local_overhead_ms``), in e2e_ms
    overhead_ms: float = 0.0
    #: pipelined (``window`` frames in flight): the slowest stage per frame (device head +
    #: encode, uplink, server decode + tail, downlink), and the frames per second predicted
    stage_ms: float = 0.0
    fps: float = 0.0
    pareto: bool = False
    #: per figure: True where it is a prediction, False where it was measured
    estimated: dict[str, bool] = field(default_factory=dict)

    @property
    def frame_interval_ms(self) -> float:
        """1000 / fps: the throughput objective, minimised like the others."""
        return 1e3 / self.fps if self.fps > 0 else math.inf

    def objective_values(self, objectives: tuple[str, ...]) -> list[float]:
        return [float(getattr(self, OBJECTIVES[o])) for o in objectives]


@dataclass
class Plan:
    request: PlanRequest
    model: str
    input_shape: list[int]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    device: dict[str, Any]
    server: dict[str, Any]
    link: dict[str, float]
    codec: str
    objectives: list[str]
    candidates: list[Option]
    baselines: dict[str, Option]
    best: dict[str, int | str]
    profiling: dict[str, Any]
    planning_s: float

    def options(self) -> list[Option]:
        return [*self.candidates, *self.baselines.values()]

    def candidate(self, split_id: int) -> Option:
        for c in self.candidates:
            if c.id == split_id:
                return c
        raise choices("split id", split_id, [c.id for c in self.candidates])

    def option(self, split_id: int | str) -> Option:
        """A candidate by id, or a baseline by name (local, offload)."""
        if isinstance(split_id, str):
            if split_id in self.baselines:
                return self.baselines[split_id]
            raise choices("split id", split_id, [*(c.id for c in self.candidates), *self.baselines])
        return self.candidate(split_id)

    def to_json(self) -> dict[str, Any]:
        out = {"format": PLAN_FORMAT, "version": PLAN_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "request":
                value = value.to_json()
            elif f.name == "candidates":
                value = [asdict(c) for c in value]
            elif f.name == "baselines":
                value = {k: asdict(v) for k, v in value.items()}
            out[f.name] = value
        return out

    def write(self, path: str | Path) -> None:
        """Write the plan JSON; an earlier file at ``path`` stays whole until the new one is complete."""
        from splitpipe._files import write_whole

        try:
            write_whole(path, json.dumps(self.to_json(), indent=2) + "\n")
        except OSError as exc:
            raise SplitpipeError(f"cannot write the plan to {path}: {exc.strerror or exc}") from None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT:
            raise SplitpipeError("not a splitpipe plan JSON (missing format: splitpipe-plan)")
        if data.get("version") != PLAN_VERSION:
            raise SplitpipeError(
                f"plan JSON version {data.get('version')!r} is not supported; accepted: {PLAN_VERSION}"
            )
        kw = {f.name: data[f.name] for f in fields(cls)}
        if not isinstance(data["request"], dict):
            raise SplitpipeError(f"'request' must be an object, got {data['request']!r}")
        kw["request"] = PlanRequest.from_json(data["request"])
        for name in ("device", "server", "link", "baselines", "best", "profiling"):
            if not isinstance(data[name], dict):
                raise SplitpipeError(f"{name!r} must be an object, got {_short(data[name])}")
        for name in ("inputs", "outputs", "candidates"):
            if not isinstance(data[name], list) or not all(isinstance(t, dict) for t in data[name]):
                raise SplitpipeError(f"{name!r} must be a list of objects, got {_short(data[name])}")
        for name in ("bandwidth_mbps", "rtt_ms"):
            value = data["link"].get(name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise SplitpipeError(f"'link' field {name!r} must be a number, got {_short(value)}")
        if sorted(data["baselines"]) != ["local", "offload"]:
            raise SplitpipeError(f"'baselines' must hold local and offload, got {sorted(data['baselines'])}")
        kw["candidates"] = [_option(c, f"candidate {i}") for i, c in enumerate(data["candidates"])]
        kw["baselines"] = {k: _option(v, f"baseline {k}") for k, v in data["baselines"].items()}
        return cls(**kw)


def _option(data: Any, where: str) -> Option:
    """An option of a plan JSON, its figures checked: they become an export's predictions."""
    if not isinstance(data, dict):
        raise SplitpipeError(f"{where} must be an object, got {_short(data)}")
    opt = Option(**data)
    for f in fields(Option):
        value = getattr(opt, f.name)
        if f.name in ("label", "codec"):
            ok = isinstance(value, str)
        elif f.name == "id":
            ok = isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
        elif f.name == "pareto":
            ok = isinstance(value, bool)
        elif f.name == "estimated":
            ok = isinstance(value, dict) and all(isinstance(v, bool) for v in value.values())
        elif f.name == "tensors":
            ok = isinstance(value, list) and all(
                isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("shape"), list)
                for t in value
            )
        else:  # a figure
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            raise SplitpipeError(f"{where}: field {f.name!r} has the wrong type, got {_short(value)}")
    return opt


def _short(value: Any) -> str:
    """``value`` for a one-line message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_plan(path: str | Path) -> Plan:
    p = Path(path)
    if not p.is_file():
        raise SplitpipeError(f"plan file not found: {p}")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SplitpipeError(f"{p}: not a readable plan JSON ({exc})") from None
    try:
        return Plan.from_json(data)
    except (KeyError, TypeError) as exc:
        raise SplitpipeError(f"{p}: malformed plan JSON ({type(exc).__name__}: {exc})") from None
    except SplitpipeError as exc:
        raise SplitpipeError(f"{p}: {exc}") from None


def resolve_profile(name: str) -> DeviceProfile:
    if name == "local":
        from splitpipe.devices.microbench import local_profile

        return local_profile()
    return load_profile(name)


def _validate(req: PlanRequest) -> None:
    for o in req.objectives:
        if o not in OBJECTIVES:
            raise choices("objective", o, OBJECTIVES)
    if not req.objectives:
        raise SplitpipeError(f"no objectives given; accepted: {', '.join(OBJECTIVES)}")
    if req.profile_mode not in PROFILE_MODES:
        raise choices("profile mode", req.profile_mode, PROFILE_MODES)
    if req.threads < 1:
        raise SplitpipeError(f"--threads must be at least 1, got {req.threads}")
    measured_here = (req.device == "local" and not req.device_from) or (
        req.server == "local" and not req.server_from
    )
    if measured_here and req.profile_mode != "analytic" and req.threads > (os.cpu_count() or 1):
        # ONNX Runtime would start every thread asked for: a typo (100000) stalls the machine
        raise SplitpipeError(
            f"--threads {req.threads} is more than the {os.cpu_count() or 1} CPUs of this machine, "
            "which measures the model"
        )
    if req.window < 1:
        raise SplitpipeError(f"--window must be at least 1 frame in flight, got {req.window}")
    if req.repeats < 1 or req.warmup < 0:
        raise SplitpipeError("--repeats must be at least 1 and --warmup at least 0")
    if req.calibration_samples < 1:
        raise SplitpipeError(f"--calibration-samples must be at least 1, got {req.calibration_samples}")
    check_max_error(req.codec, req.max_error)
    for name, value in (
        ("--overhead-ms", req.overhead_ms),
        ("--local-overhead-ms", req.local_overhead_ms),
        ("--device-overhead-ms", req.device_overhead_ms),
    ):
        if not (value >= 0 and value < float("inf")):
            raise SplitpipeError(f"{name} must be a non-negative number of milliseconds, got {value}")
    check_codec_name(req.codec)
    if req.offload_codec != "raw":
        check_codec_name(req.offload_codec)


@dataclass
class Analysis:
    """The model-dependent part of a plan: loaded model, graph and cuts (reused by export)."""

    loaded: LoadedModel
    graph: Graph
    cuts: list[Cut]


def analyse(req: PlanRequest) -> Analysis:
    loaded = load_model(req.model, req.input_shape, req.weights)
    graph = Graph(loaded.model, loaded.path)
    cuts = find_cuts(graph, req.max_cut_tensors)
    return Analysis(loaded, graph, cuts)


def calibration_feeds(
    req: PlanRequest, graph: Graph, preprocess: dict[str, Any] | None
) -> list[dict[str, np.ndarray]]:
    """The inputs codecs are measured on: ``calibration_samples`` random feeds, or as many
    pictures of ``calibration_images`` (read and preprocessed by the agent's image source)."""
    specs = [graph.info(t) for t in graph.inputs]
    if req.calibration_images is None:
        return [random_feed(specs, seed=s) for s in range(req.calibration_samples)]
    from splitpipe.devices.runtimes import TensorSpec
    from splitpipe.edge.sources import ImageSource

    source = ImageSource(
        Path(req.calibration_images), tuple(TensorSpec(i.name, i.dtype, i.shape) for i in specs), preprocess
    )
    feeds: list[dict[str, np.ndarray]] = []
    with source:
        while len(feeds) < req.calibration_samples and (feed := source.read()) is not None:
            feeds.append(feed)
    if len(feeds) < req.calibration_samples:
        _LOGGER.info(
            "%s holds %d picture(s); calibrating codecs on those", req.calibration_images, len(feeds)
        )
    return feeds


def _codecs(
    req: PlanRequest, graph: Graph, cuts: list[Cut], preprocess: dict[str, Any] | None = None
) -> dict[int | str, CutCodec]:
    """Encode every cut's real tensors, computed for a few calibration inputs, with the requested
    codec; and the inputs themselves with the offload codec (key ``offload``)."""
    feeds = calibration_feeds(req, graph, preprocess)
    values = probe(graph, [t for c in cuts for t in c.tensors], feeds)
    out: dict[int | str, CutCodec] = {
        c.id: codec_for_cut(req.codec, [[v[t] for t in c.tensors] for v in values], max_error=req.max_error)
        for c in cuts
    }
    out["offload"] = codec_for_cut(req.offload_codec, [[f[t] for t in graph.inputs] for f in feeds])
    return out


@dataclass
class _FromPlan:
    """Timings taken from a plan measured on the device or the server."""

    timings: Timings
    #: per option id: (codec, encode ms on the device or decode ms on the server)
    codec_ms: dict[int | str, tuple[str, float]]
    #: per option id, the codec stage of that plan (codec, bytes, error; times of that side),
    #: when it was made with the same codec settings: nothing to measure again
    codecs: dict[int | str, CutCodec] | None = None


#: request fields that decide the codec stage's choices, bytes and errors (not its times)
_CODEC_FIELDS = ("codec", "max_error", "calibration_samples", "calibration_images", "offload_codec")


def _from_plan(path: str, side: str, req: PlanRequest, cuts: list[Cut]) -> _FromPlan:
    """Head (device) or tail (server) times of every cut from a plan made on that machine."""
    other = read_plan(path)
    where = f"--{side}-from {path}"
    if other.model != req.model or other.request.input_shape != req.input_shape:
        wanted = list(req.input_shape) if req.input_shape else "its default input shape"
        raise SplitpipeError(
            f"{where} is a plan of {other.model} {other.input_shape}, not of {req.model} {wanted}"
        )
    theirs = {c.id: c for c in other.candidates}
    for cut in cuts:
        c = theirs.get(cut.id)
        if c is None or [t["name"] for t in c.tensors] != list(cut.tensors):
            raise SplitpipeError(
                f"{where} has other split points (plan it with the same --max-cut-tensors and model)"
            )
    mine = other.device if side == "device" else other.server
    if side == "device":
        times = {int(c.id): c.head_ms for c in other.candidates}
        full = other.baselines["local"].head_ms
        codec = {c.id: (c.codec, c.encode_ms) for c in other.candidates}
        codec["offload"] = (other.baselines["offload"].codec, other.baselines["offload"].encode_ms)
        timings = Timings(
            times, {}, full, mine["estimated"], f"from {path}: {mine['method']}", mine["details"]
        )
    else:
        times = {int(c.id): c.tail_ms for c in other.candidates}
        full = other.baselines["offload"].tail_ms
        codec = {c.id: (c.codec, c.decode_ms) for c in other.candidates}
        codec["offload"] = (other.baselines["offload"].codec, other.baselines["offload"].decode_ms)
        timings = Timings(
            {}, times, full, mine["estimated"], f"from {path}: {mine['method']}", mine["details"]
        )
    same = all(getattr(other.request, f) == getattr(req, f) for f in _CODEC_FIELDS)
    codecs: dict[int | str, CutCodec] | None = None
    if same:
        codecs = {
            o.id: CutCodec(o.codec, o.tx_bytes, o.encode_ms, o.decode_ms, o.codec_error)
            for o in [*other.candidates, other.baselines["offload"]]
        }
    return _FromPlan(timings, codec, codecs)


def _reused_codecs(dev: _FromPlan | None, srv: _FromPlan | None) -> dict[int | str, CutCodec] | None:
    """The codec stage of the device's and the server's plans, where both were made with this
    request's codec settings and chose alike: encode times from the device, decode from the server."""
    if not (dev and srv and dev.codecs and srv.codecs) or dev.codecs.keys() != srv.codecs.keys():
        return None
    if any(dev.codecs[k].codec != srv.codecs[k].codec for k in dev.codecs):
        return None
    return {k: replace(c, decode_ms=srv.codecs[k].decode_ms) for k, c in dev.codecs.items()}


def make_plan(req: PlanRequest, progress: Progress | None = None, analysis: Analysis | None = None) -> Plan:
    """Find every cut of the model, predict its cost on the device, link and server, and mark the front."""
    _validate(req)
    started = time.perf_counter()
    link = parse_link(req.link)
    device = resolve_profile(req.device)
    server = resolve_profile(req.server)
    a = analysis or analyse(req)
    graph, cuts = a.graph, a.cuts
    if not cuts:
        _LOGGER.warning(
            "no cut with at most %d crossing tensor(s); try --max-cut-tensors", req.max_cut_tensors
        )

    dev_from = _from_plan(req.device_from, "device", req, cuts) if req.device_from else None
    srv_from = _from_plan(req.server_from, "server", req, cuts) if req.server_from else None
    measure_here = (req.device == "local" and not dev_from) or (req.server == "local" and not srv_from)
    measured: Timings | None = None
    if measure_here and req.profile_mode != "analytic":
        opts = MeasureOptions(
            threads=req.threads, warmup=req.warmup, repeats=req.repeats, mode=req.profile_mode
        )
        measured = measure(graph, cuts, opts, progress)
    dev_t = measured if measured and req.device == "local" else analytic(graph, cuts, device)
    srv_t = measured if measured and req.server == "local" else analytic(graph, cuts, server)
    dev_t = dev_from.timings if dev_from else dev_t
    srv_t = srv_from.timings if srv_from else srv_t

    # Bytes and errors do not depend on the machine: plans from the device and the server made
    # with the same codec settings have them already (and the codec times of their sides).
    reused = _reused_codecs(dev_from, srv_from)
    if reused is not None:
        _LOGGER.info("codec choices, bytes and errors taken from the device's and the server's plans")
    codecs = reused if reused is not None else _codecs(req, graph, cuts, a.loaded.preprocess)
    enc_scale, dec_scale = _codec_scales(req, device, server)

    def codec_ms(
        side: _FromPlan | None, cut_id: int | str, codec: str, here_ms: float, scale: float
    ) -> tuple[float, bool]:
        """A codec time measured on that side if its plan used the same codec, else this machine's, scaled."""
        if side and cut_id in side.codec_ms and side.codec_ms[cut_id][0] == codec:
            return side.codec_ms[cut_id][1], False
        return here_ms * scale, scale != 1.0 or side is not None

    outputs_bytes = sum(graph.info(t).nbytes for t in graph.outputs)
    e_src = energy_source(device)

    def option(
        oid: int | str, label: str, tensors: list[str], stages: Stages, mem: int, flops: int, sent: bool
    ) -> Option:
        overhead = req.overhead_ms if sent else req.local_overhead_ms
        # local frames run one after another (one in flight), with the agent's own device work
        times = predict(
            stages, link if sent else None, overhead, req.window if sent else 1, req.device_overhead_ms
        )
        est = {
            "head_ms": dev_t.estimated,
            "tail_ms": srv_t.estimated,
            "encode_ms": req.device != "local" or dev_from is not None,
            "decode_ms": req.server != "local" or srv_from is not None,
            "tx_bytes": False,
            "reply_bytes": False,  # the outputs' sizes, exact
            "codec_error": False,  # measured on the calibration inputs
            "tx_ms": sent,
            "rtt_ms": sent,  # the link's, as given
            "reply_ms": sent,
            "e2e_ms": sent or dev_t.estimated,
            "device_energy_mj": True,
            "head_mem_bytes": True,
            "head_flops": True,  # counted by the FLOP convention of flops.py
            "overhead_ms": True,
            "stage_ms": sent or dev_t.estimated,
            "fps": True,
        }
        return Option(
            id=oid,
            label=label,
            tensors=[{**graph.info(t).to_json(), "bytes": graph.info(t).nbytes} for t in tensors],
            codec=req.codec if sent else "none",
            tx_bytes=stages.tx_bytes,
            head_ms=stages.head_ms,
            encode_ms=stages.encode_ms,
            decode_ms=stages.decode_ms,
            tail_ms=stages.tail_ms,
            reply_bytes=stages.reply_bytes,
            device_energy_mj=device_energy_mj(stages, times, device),
            head_mem_bytes=mem,
            head_flops=flops,
            estimated=est,
            tx_ms=times["tx_ms"],
            rtt_ms=times["rtt_ms"],
            reply_ms=times["reply_ms"],
            e2e_ms=times["e2e_ms"],
            overhead_ms=overhead,
            stage_ms=times["stage_ms"],
            fps=times["fps"],
        )

    def sent_option(
        oid: int | str, label: str, tensors: list[str], head_ms: float, tail_ms: float, mem: int, flops: int
    ) -> Option:
        cc = codecs[oid]
        enc, enc_est = codec_ms(dev_from, oid, cc.codec, cc.encode_ms, enc_scale)
        dec, dec_est = codec_ms(srv_from, oid, cc.codec, cc.decode_ms, dec_scale)
        opt = option(
            oid,
            label,
            tensors,
            Stages(head_ms, enc, cc.tx_bytes, dec, tail_ms, outputs_bytes),
            mem,
            flops,
            True,
        )
        opt.codec, opt.codec_error = cc.codec, cc.rel_l2
        opt.estimated["encode_ms"], opt.estimated["decode_ms"] = enc_est, dec_est
        return opt

    candidates = [
        sent_option(
            cut.id,
            cut.label,
            list(cut.tensors),
            dev_t.head_ms[cut.id],
            srv_t.tail_ms[cut.id],
            weight_bytes(graph, cut.head) + peak_activation_bytes(graph, cut.head),
            total_flops(graph, cut.head),
        )
        for cut in cuts
    ]

    full_flops = total_flops(graph, graph.full)
    local = option(
        "local",
        "all on the device",
        [],
        Stages(dev_t.full_ms, 0.0, 0, 0.0, 0.0, 0),
        weight_bytes(graph, graph.full) + peak_activation_bytes(graph, graph.full),
        full_flops,
        False,
    )
    local.estimated["tail_ms"] = False
    label = "input sent as it is" if req.offload_codec == "raw" else f"input sent as {req.offload_codec}"
    offload = sent_option("offload", label, list(graph.inputs), 0.0, srv_t.full_ms, 0, 0)
    offload.estimated["head_ms"] = False
    baselines = {"local": local, "offload": offload}

    objectives = tuple(req.objectives)
    everything = [*candidates, local, offload]
    for opt, ok in zip(
        everything, pareto_mask([o.objective_values(objectives) for o in everything]), strict=True
    ):
        opt.pareto = ok
    best = {
        name: min(everything, key=lambda o, f=fieldname: (getattr(o, f), o.e2e_ms)).id  # type: ignore[misc]
        for name, fieldname in OBJECTIVES.items()
    }

    def side(profile: DeviceProfile, t: Timings) -> dict[str, Any]:
        return {
            "name": profile.name,
            "estimated": t.estimated,
            "method": t.method,
            "details": t.details,
            "energy_source": e_src if profile is device else None,
        }

    return Plan(
        request=req,
        model=req.model,
        input_shape=list(next(iter(a.loaded.input_shapes.values()))),
        inputs=[graph.info(t).to_json() for t in graph.inputs],
        outputs=[graph.info(t).to_json() for t in graph.outputs],
        device=side(device, dev_t),
        server=side(server, srv_t),
        link=link.to_json(),
        codec=req.codec,
        objectives=list(objectives),
        candidates=candidates,
        baselines=baselines,
        best=best,
        profiling={
            "whole_model_device_ms": dev_t.full_ms,
            "whole_model_server_ms": srv_t.full_ms,
            "graph_nodes": graph.n,
            "cuts": len(cuts),
            "max_cut_tensors": req.max_cut_tensors,
            "codec_path": _codec_path(),
        },
        planning_s=time.perf_counter() - started,
    )


def with_codec(
    plan: Plan, option: Option, graph: Graph, codec: str, preprocess: dict[str, Any] | None
) -> Option:
    """``option`` of ``plan`` sending its cut with ``codec`` instead: the codec measured on the
    cut's tensors for the plan's calibration inputs (bytes, error, codec times on this machine,
    scaled to the plan's device and server as planning does), and every figure that follows
    from them re-predicted for the plan's link; head and tail times stay the plan's."""
    req = plan.request
    feeds = calibration_feeds(req, graph, preprocess)
    names = [t["name"] for t in option.tensors]
    if option.id == "offload":
        per_sample = [[f[t] for t in names] for f in feeds]
    else:
        per_sample = [[v[t] for t in names] for v in probe(graph, names, feeds)]
    cc = codec_for_cut(codec, per_sample)
    device, server = resolve_profile(req.device), resolve_profile(req.server)
    enc_scale, dec_scale = _codec_scales(req, device, server)
    enc, dec = cc.encode_ms * enc_scale, cc.decode_ms * dec_scale
    stages = Stages(option.head_ms, enc, cc.tx_bytes, dec, option.tail_ms, option.reply_bytes)
    link = Link(plan.link["bandwidth_mbps"], plan.link["rtt_ms"])
    times = predict(stages, link, option.overhead_ms, req.window, req.device_overhead_ms)
    return replace(
        option,
        codec=cc.codec,
        codec_error=cc.rel_l2,
        tx_bytes=cc.tx_bytes,
        encode_ms=enc,
        decode_ms=dec,
        device_energy_mj=device_energy_mj(stages, times, device),
        estimated={
            **option.estimated,
            # measured here: the device's or the server's only where this machine is that side
            "encode_ms": req.device != "local" or req.device_from is not None,
            "decode_ms": req.server != "local" or req.server_from is not None,
        },
        tx_ms=times["tx_ms"],
        rtt_ms=times["rtt_ms"],
        reply_ms=times["reply_ms"],
        e2e_ms=times["e2e_ms"],
        stage_ms=times["stage_ms"],
        fps=times["fps"],
    )


def _codec_scales(req: PlanRequest, device: DeviceProfile, server: DeviceProfile) -> tuple[float, float]:
    """Codec times are measured here; codecs are memory-bound, so a device's or a server's that
    is not this machine are scaled by the ratio of memory bandwidths: (encode, decode) factors."""
    here = resolve_profile("local") if {req.device, req.server} != {"local"} else device
    enc = 1.0 if req.device == "local" else here.mem_bandwidth_gbs / device.mem_bandwidth_gbs
    dec = 1.0 if req.server == "local" else here.mem_bandwidth_gbs / server.mem_bandwidth_gbs
    return enc, dec


def _codec_path() -> str:
    """Which fast path the measured encode/decode times ran on (docs/codecs.md)."""
    from splitpipe.kernels import quant

    return "compiled kernels" if quant.C is not None else f"ONNX Runtime kernels ({quant.C_MISSING})"


__all__ = ["OBJECTIVES", "Analysis", "Option", "Plan", "PlanRequest", "analyse", "make_plan", "read_plan"]
