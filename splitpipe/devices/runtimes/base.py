"""The runner contract shared by every backend.

A runner is a context manager around one loaded model. The public :meth:`Runner.infer` checks
the feed once (names, dtypes, shapes) and times the call; backends implement only
:meth:`Runner._infer`, in the manner of Polygraphy's runners.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np

from splitpipe.errors import SplitpipeError


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype and shape of a model input or output; ``None`` marks a free dimension."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int | None, ...]

    def describe(self) -> str:
        """``name dtype[d0,d1,...]`` with ``?`` for free dimensions, for messages."""
        return f"{self.name} {self.dtype.name}[{','.join('?' if d is None else str(d) for d in self.shape)}]"

    def accepts(self, array: np.ndarray) -> str | None:
        """Why ``array`` does not fit this spec, or None if it does."""
        if array.dtype != self.dtype:
            return f"input {self.name!r} has dtype {array.dtype}, expected {self.dtype}"
        if array.ndim != len(self.shape) or any(
            want is not None and want != got for want, got in zip(self.shape, array.shape, strict=False)
        ):
            want_s = "(" + ", ".join("?" if d is None else str(d) for d in self.shape) + ")"
            return f"input {self.name!r} has shape {tuple(array.shape)}, expected {want_s}"
        return None

    def agrees(self, other: TensorSpec) -> bool:
        """Same name, dtype and rank, and no dimension fixed to two different sizes."""
        return (
            self.name == other.name
            and self.dtype == other.dtype
            and len(self.shape) == len(other.shape)
            and all(a is None or b is None or a == b for a, b in zip(self.shape, other.shape, strict=True))
        )

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype.name, "shape": list(self.shape)}


class Runner(abc.ABC):
    """Run one model half. Use as a context manager; :meth:`infer` maps names to arrays."""

    #: registry name of the backend, e.g. ``"ort"``
    name: str = ""

    def __init__(self) -> None:
        self._active = False
        self.last_infer_ms = 0.0

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.deactivate()

    def activate(self) -> None:
        if not self._active:
            self._activate()
            self._active = True

    def deactivate(self) -> None:
        if self._active:
            self._active = False
            self._deactivate()

    @property
    def is_active(self) -> bool:
        return self._active

    # -- inference -------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def inputs(self) -> list[TensorSpec]: ...

    @property
    @abc.abstractmethod
    def outputs(self) -> list[TensorSpec]: ...

    def check_feed(self, feed: dict[str, np.ndarray]) -> None:
        """Raise SplitpipeError naming the first problem with ``feed``."""
        specs = {s.name: s for s in self.inputs}
        missing = sorted(set(specs) - set(feed))
        extra = sorted(set(feed) - set(specs))
        if missing or extra:
            raise SplitpipeError(
                f"feed names {sorted(feed)} do not match the model inputs {sorted(specs)}"
                + (f" (missing {missing})" if missing else "")
                + (f" (unexpected {extra})" if extra else "")
            )
        for name, array in feed.items():
            problem = specs[name].accepts(np.asarray(array))
            if problem:
                raise SplitpipeError(problem)

    def infer(self, feed: dict[str, np.ndarray], *, check: bool = True) -> dict[str, np.ndarray]:
        """Run the model on ``feed``; the wall time lands in :attr:`last_infer_ms`."""
        if not self._active:
            raise RuntimeError(f"{type(self).__name__} used outside its context")
        if check:
            self.check_feed(feed)
        start = time.perf_counter()
        out = self._infer(feed)
        self.last_infer_ms = (time.perf_counter() - start) * 1e3
        return out

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _deactivate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
