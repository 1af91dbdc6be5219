"""Model loading: a model spec to an ONNX graph with static shapes, exported once and cached.

Specs: ``torchvision:NAME``, ``package.module:callable`` (returns a ``torch.nn.Module``), or a
path to an ``.onnx`` file. torch models are exported with the dynamo exporter at a pinned opset
and IR version that ONNX Runtime accepts. The cached model keeps its weights in one external
data file, so that the many small head/tail/segment models built during planning refer to the
same weights instead of copying them.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from splitpipe._env import cache_dir
from splitpipe._files import sha256_file
from splitpipe.errors import SplitpipeError

if TYPE_CHECKING:
    import onnx

_LOGGER = logging.getLogger(__name__)

#: opset of exported models (the dynamo exporter's minimum is 18)
OPSET = 18
#: highest IR version written; onnxruntime 1.31 accepts up to 13, older releases less
IR_VERSION = 10
DEFAULT_IMAGE_SHAPE = (1, 3, 224, 224)
#: ImageNet normalisation used by every torchvision classifier
IMAGENET = {"layout": "NCHW", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
_DATA_SUFFIX = ".data"
#: bump when the cached form changes
_CACHE_VERSION = "1"


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec."""

    kind: str  # "torchvision", "callable" or "onnx"
    target: str
    text: str


def parse_spec(text: str) -> ModelSpec:
    accepted = "torchvision:NAME, package.module:callable, or a path to an .onnx file"
    if not text or not text.strip():
        raise SplitpipeError(f"empty model spec; accepted: {accepted}")
    text = text.strip()
    if text.lower().endswith(".onnx") or (os.sep in text and ":" not in text):
        return ModelSpec("onnx", text, text)
    if text.startswith("torchvision:"):
        name = text.split(":", 1)[1]
        if not name:
            raise SplitpipeError(f"model spec {text!r} names no torchvision model; accepted: {accepted}")
        return ModelSpec("torchvision", name, text)
    if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", text):
        return ModelSpec("callable", text, text)
    hint = ""
    if text.lower().endswith(".json"):
        hint = " (a plan JSON is given with --from to plan, --plan to export)"
    elif text.lower().endswith((".pt", ".pth", ".pt2", ".ckpt")):
        hint = " (a saved state_dict is given with --weights FILE beside torchvision:NAME or package.module:callable)"
    raise SplitpipeError(f"unrecognised model spec {text!r}; accepted: {accepted}{hint}")


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` -> (1, 3, 224, 224)."""
    parts = [p.strip() for p in re.split(r"[,x]", text.strip())]
    shape = tuple(int(p) for p in parts) if all(p.isascii() and p.isdigit() for p in parts) else ()
    if not shape or any(d <= 0 for d in shape):
        raise SplitpipeError(f"invalid input shape {text!r}; expected positive integers such as 1,3,224,224")
    return shape


@dataclass
class LoadedModel:
    """An ONNX model ready for planning: static shapes, weights in ``path``'s external data file."""

    spec: str
    path: Path
    model: onnx.ModelProto
    input_shapes: dict[str, tuple[int, ...]]
    preprocess: dict[str, Any] | None

    @property
    def name(self) -> str:
        base = self.spec.split(":")[-1] if not self.spec.lower().endswith(".onnx") else Path(self.spec).stem
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("_.") or "model"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, without terminal colours (torch's exporter
    colours its messages), or the exception's type where the message is empty."""
    lines = _ANSI.sub("", str(exc)).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _torch_module(spec: ModelSpec) -> Any:
    try:
        import torch
        import torchvision
    except ImportError as exc:
        raise SplitpipeError(
            f"{spec.text} needs torch and torchvision (pip install 'splitpipe[plan]'): {exc}"
        ) from None
    if spec.kind == "torchvision":
        names = torchvision.models.list_models(module=torchvision.models)
        if spec.target not in names:
            raise SplitpipeError(
                f"unknown torchvision model {spec.target!r}; accepted: {', '.join(sorted(names))}"
            )
        kwargs: dict[str, Any] = {"weights": None}
        if spec.target in ("googlenet", "inception_v3"):
            kwargs["aux_logits"] = False
            kwargs["init_weights"] = False
        return torchvision.models.get_model(spec.target, **kwargs)
    module_name, attr = spec.target.split(":")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # so that `models.mine:build` works from a project folder
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SplitpipeError(f"cannot import {module_name!r} for model spec {spec.text!r}: {exc}") from None
    except Exception as exc:  # the user's module failed while importing
        raise SplitpipeError(
            f"importing {module_name!r} for model spec {spec.text!r} failed: {_describe(exc)}"
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise SplitpipeError(f"{module_name} has no callable {attr!r} (model spec {spec.text!r})")
    try:
        model = factory()
    except Exception as exc:
        raise SplitpipeError(
            f"{spec.text}() failed: {_describe(exc)}; the factory is called with no arguments "
            "and must return a torch.nn.Module"
        ) from None
    if not isinstance(model, torch.nn.Module):
        raise SplitpipeError(f"{spec.text} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def _load_weights(module: Any, weights: Path) -> None:
    import torch

    if not weights.is_file():
        raise SplitpipeError(f"weights file not found: {weights}")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SplitpipeError(f"{weights}: not a readable state_dict ({_describe(exc)})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SplitpipeError(
            f"{weights} holds a {type(state).__name__}, not a state_dict (a dict of tensors)"
        )
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and hasattr(state[k], "shape") and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:

        def some(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

        parts = [f"missing {some(missing)}"] if missing else []
        parts += [f"unexpected {some(unexpected)}"] if unexpected else []
        parts += [f"other shapes for {some(shapes)}"] if shapes else []
        raise SplitpipeError(f"{weights} does not fit the model: {'; '.join(parts)}")
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as exc:
        raise SplitpipeError(f"{weights} does not fit the model: {_first_line(exc)}") from None


def load_torch_module(
    spec_text: str, weights: str | os.PathLike[str] | None = None
) -> tuple[Any, dict[str, Any] | None]:
    """The torch module named by a torchvision or callable spec, with ``weights`` loaded, and
    the preprocessing its inputs need (ImageNet's for torchvision, else None)."""
    spec = parse_spec(spec_text)
    if spec.kind == "onnx":
        raise SplitpipeError(
            f"{spec_text} is an ONNX file; training needs a torch model (torchvision:NAME or package.module:callable)"
        )
    module = _torch_module(spec)
    if weights:
        _load_weights(module, Path(weights))
    return module, (dict(IMAGENET) if spec.kind == "torchvision" else None)


def export_torch(module: Any, shape: tuple[int, ...]) -> onnx.ModelProto:
    """``module`` exported to ONNX (dynamo, ``OPSET``) for one input of ``shape``; not cached."""
    import torch

    module.eval()
    example = torch.randn(*shape)
    try:
        with torch.no_grad():
            module(example)
    except Exception as exc:
        raise SplitpipeError(
            f"the model does not accept input shape {list(shape)}: {_first_line(exc)}"
        ) from None
    _LOGGER.info("exporting to ONNX (opset %d), done once per model and shape", OPSET)
    # the exporter prints graphs and tracebacks of the strategies it tries; the reason for a
    # failure is in the exception, so what it printed is only logged (at debug level)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            program = torch.onnx.export(
                module, (example,), None, dynamo=True, opset_version=OPSET, verbose=False
            )
    except Exception as exc:
        cause: BaseException = exc
        while cause.__cause__ is not None:  # the exporter wraps the reason in its own errors
            cause = cause.__cause__
        raise SplitpipeError(
            f"torch.onnx.export cannot export this model: {_describe(cause)}; "
            "export it to ONNX yourself and plan the .onnx file"
        ) from None
    finally:
        if printed.getvalue().strip():
            _LOGGER.debug("torch.onnx.export printed:\n%s", printed.getvalue())
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    proto: onnx.ModelProto = program.model_proto
    return proto


def _external_data_files(path: Path) -> list[tuple[str, Path]]:
    """The external data files an ONNX file's tensors refer to (location, path), where they exist
    (a missing one fails when the model is read, with ONNX's message)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not a model at all: _read_onnx says so
        return []
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        tensors += [a.t for a in node.attribute if a.HasField("t")]
    locations = sorted(
        {
            e.value
            for t in tensors
            if t.data_location == onnx.TensorProto.EXTERNAL
            for e in t.external_data
            if e.key == "location"
        }
    )
    return [(loc, path.parent / loc) for loc in locations if (path.parent / loc).is_file()]


def _read_onnx(path: Path) -> onnx.ModelProto:
    import onnx

    if not path.is_file():
        raise SplitpipeError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=False)
    except Exception as exc:
        raise SplitpipeError(f"{path} is not a valid ONNX model: {_first_line(exc)}") from None
    return model


def _static_input_shapes(
    model: onnx.ModelProto, override: tuple[int, ...] | None
) -> dict[str, tuple[int, ...]]:
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    shapes: dict[str, tuple[int, ...]] = {}
    for inp in inputs:
        dims = inp.type.tensor_type.shape.dim
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
        if override is not None and len(inputs) == 1:
            if len(override) != len(shape) or any(
                s > 0 and s != o for s, o in zip(shape, override, strict=True)
            ):
                want = ",".join(str(s) if s > 0 else "?" for s in shape)
                raise SplitpipeError(
                    f"input shape {list(override)} does not fit input {inp.name!r} of shape [{want}]"
                )
            shape = override
        if any(d <= 0 for d in shape):
            want = ",".join(str(s) if s > 0 else "?" for s in shape)
            raise SplitpipeError(
                f"input {inp.name!r} has free dimensions [{want}]; give --input-shape with every dimension"
            )
        shapes[inp.name] = shape
    if override is not None and len(inputs) != 1:
        raise SplitpipeError(f"--input-shape fits single-input models; this one has {len(inputs)} inputs")
    return shapes


def load_model(
    spec_text: str,
    input_shape: tuple[int, ...] | None = None,
    weights: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Load (and on first use export and cache) the model named by ``spec_text``."""
    spec = parse_spec(spec_text)
    weights_path = Path(weights) if weights else None
    if weights_path and spec.kind == "onnx":
        raise SplitpipeError("--weights applies to torch models; an ONNX file carries its own weights")
    if weights_path and not weights_path.is_file():
        raise SplitpipeError(f"weights file not found: {weights_path}")

    if spec.kind == "onnx":
        source = Path(spec.target)
        if source.is_dir():
            raise SplitpipeError(f"{source} is a directory; give the path of an .onnx file")
        if not source.is_file():
            raise SplitpipeError(f"ONNX file not found: {source}")
        key_parts = ["onnx", sha256_file(source), str(input_shape)]
        # weights kept in external data files are not in the .onnx file: retrained ones leave it
        # byte for byte the same, and must not be served the cached copy of the old ones
        key_parts += [f"{name}={sha256_file(data)}" for name, data in _external_data_files(source)]
    else:
        shape = input_shape or DEFAULT_IMAGE_SHAPE
        key_parts = [spec.kind, spec.target, str(shape)]
        if weights_path:
            key_parts.append(sha256_file(weights_path))
        try:
            import torch

            key_parts.append(torch.__version__)
        except ImportError:
            pass
    built = None
    if spec.kind == "callable":
        # the user's model may have changed since it was cached (a layer added, forward edited, a
        # checkpoint the factory loads retrained) under the same spec: key on what it builds now
        built = _build_seeded(spec)
        key_parts.append(_fingerprint(built))
    key_parts += [_CACHE_VERSION, str(OPSET), str(IR_VERSION)]
    key = hashlib.sha256("|".join(key_parts).encode()).hexdigest()[:20]
    folder = cache_dir() / "models" / key
    path = folder / "model.onnx"
    meta_path = folder / "meta.json"

    if not (path.is_file() and meta_path.is_file()):
        if spec.kind == "onnx":
            raw = _read_onnx(Path(spec.target))
        else:
            module = built if built is not None else _torch_module(spec)
            if weights_path:
                _load_weights(module, weights_path)
            raw = export_torch(module, input_shape or DEFAULT_IMAGE_SHAPE)
        shapes = _static_input_shapes(raw, input_shape if spec.kind == "onnx" else None)
        normalized = normalize(raw, shapes)
        if spec.kind == "onnx":  # the checker passes ops ONNX Runtime has not: say so now, not cached
            _check_runtime_loads(normalized, Path(spec.target))
        preprocess = None
        if spec.kind == "torchvision":
            (only,) = shapes.values()
            preprocess = {**IMAGENET, "size": list(only[-2:])}
        _write_cached(
            normalized, folder, {"spec": spec.text, "input_shapes": shapes, "preprocess": preprocess}
        )

    import onnx

    model = onnx.load(str(path), load_external_data=False)
    meta = json.loads(meta_path.read_text())
    return LoadedModel(
        spec=spec.text,
        path=path,
        model=model,
        input_shapes={k: tuple(v) for k, v in meta["input_shapes"].items()},
        preprocess=meta["preprocess"],
    )


def _check_runtime_loads(model: onnx.ModelProto, source: Path) -> None:
    """ONNX Runtime can build a session of ``model`` (the user's file ``source``, normalized),
    or one line naming the user's file rather than the cache's copy."""
    try:
        import onnxruntime as ort
    except ImportError:
        return  # whatever runs the model later says what to install
    if model.ByteSize() > 1 << 30:  # too large to hand over in memory; the profiler loads it later
        return
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        reason = re.sub(r"^.*?Load model from .*? failed:\s*", "", _first_line(exc))
        raise SplitpipeError(f"ONNX Runtime cannot load {source}: {reason}") from None


def _build_seeded(spec: ModelSpec) -> Any:
    """The module a callable spec builds, with random initialisation from a fixed seed (the
    caller's random state is left as it was), so that the same code builds the same weights."""
    try:
        import torch
    except ImportError:
        return _torch_module(spec)  # which says what to install
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _torch_module(spec)


def _fingerprint(module: Any) -> str:
    """A digest of what a torch module computes: its structure, the source of its classes
    (forward), and its weights and buffers."""
    import inspect

    import torch

    digest = hashlib.sha256(repr(module).encode())
    for cls in sorted({type(m) for m in module.modules()}, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
        try:
            digest.update(inspect.getsource(cls).encode())
        except (OSError, TypeError):  # defined where no source is kept
            digest.update(f"{cls.__module__}.{cls.__qualname__}".encode())
    for name, value in module.state_dict().items():
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        try:
            digest.update(tensor.reshape(-1).view(dtype=torch.uint8).numpy().tobytes())
        except (RuntimeError, TypeError):  # a quantized or otherwise opaque tensor
            digest.update(str(tensor.tolist()).encode())
    return digest.hexdigest()


def _write_cached(model: onnx.ModelProto, folder: Path, meta: dict[str, Any]) -> None:
    import onnx

    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    onnx.save_model(
        model,
        str(tmp / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx" + _DATA_SUFFIX,
        size_threshold=1024,
    )
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)  # atomic: a crash never leaves a half-written cache entry


def normalize(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """Fix input shapes, cap the IR version, infer every tensor's shape, keep a short label per node."""
    import onnx

    model.ir_version = min(model.ir_version, IR_VERSION)
    for inp in model.graph.input:
        if inp.name in input_shapes:
            dims = inp.type.tensor_type.shape.dim
            for d, size in zip(dims, input_shapes[inp.name], strict=True):
                d.Clear()
                d.dim_value = size
    # Only the module path survives of the exporter's metadata (stack traces would bloat every half).
    for node in model.graph.node:
        label = _node_label(node)
        del node.metadata_props[:]
        if label:
            node.metadata_props.add(key="label", value=label)
    del model.graph.value_info[:]
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # a custom op can stop inference; shapes then come from a probe run
        _LOGGER.debug("ONNX shape inference failed: %s", exc)
    return model


def _node_label(node: onnx.NodeProto) -> str:
    props = {p.key: p.value for p in node.metadata_props}
    if "label" in props:
        return props["label"]
    scopes = props.get("pkg.torch.onnx.name_scopes")
    if scopes:
        try:
            parts = [p.strip().strip("'\"") for p in scopes.strip("[]").split(",")]
        except ValueError:
            parts = []
        parts = [p for p in parts if p]
        # the last entry is the fx node's own name; the one before is the module path
        if len(parts) >= 2:
            return parts[-2]
        if parts:
            return parts[0]
    return ""
