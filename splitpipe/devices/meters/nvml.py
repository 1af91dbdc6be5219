"""NVIDIA GPU energy through NVML (the ``pynvml`` module of ``nvidia-ml-py``, imported lazily).

Volta and newer report a total-energy counter (millijoules since the driver loaded): the energy
of a window is the difference of two readings. Older GPUs report only instantaneous power
(milliwatts), integrated with the trapezoid rule. Either way it is the GPU board alone.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from splitpipe.devices.meters.base import Meter, Reading, SensorLost


class NvmlMeter(Meter):
    """One GPU's energy counter (or power samples where the counter is not supported)."""

    name = "nvml"
    default_rate_hz = 20.0

    def __init__(
        self, *, index: int = 0, nvml: ModuleType | Any = None, rate_hz: float | None = None
    ) -> None:
        self.index = index
        #: the NVML binding; injectable so the counter logic can be tested without a GPU
        self._nvml = nvml
        self._handle: Any = None
        self.kind = "power"
        super().__init__(rate_hz=rate_hz)

    def _module(self) -> Any:
        if self._nvml is None:
            self._nvml = importlib.import_module("pynvml")
        return self._nvml

    def unavailable_reason(self) -> str | None:
        try:
            nvml = self._module()
        except ImportError as exc:
            return f"pynvml cannot be imported ({exc}); install nvidia-ml-py"
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError subclasses: no driver, no GPU, library missing
            return f"NVML cannot start: {exc} (no NVIDIA driver or GPU)"
        try:
            count = nvml.nvmlDeviceGetCount()
            if self.index >= count:
                return f"GPU index {self.index} not present ({count} GPU(s))"
            handle = nvml.nvmlDeviceGetHandleByIndex(self.index)
            try:
                nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                self.kind = "counter"
            except Exception:
                nvml.nvmlDeviceGetPowerUsage(handle)
                self.kind = "power"
        except Exception as exc:
            return f"NVML cannot read GPU {self.index}: {exc}"
        finally:
            nvml.nvmlShutdown()
        return None

    @property
    def source(self) -> str:
        how = "energy counter" if self.kind == "counter" else "power samples"
        return f"nvml:gpu{self.index} ({how})"

    def note(self) -> str:
        return "GPU board only: not the host CPU, memory or the rest of the machine"

    def _on_start(self) -> None:
        nvml = self._module()
        nvml.nvmlInit()
        self._handle = nvml.nvmlDeviceGetHandleByIndex(self.index)

    def _on_stop(self) -> None:
        if self._handle is not None:
            self._handle = None
            self._module().nvmlShutdown()

    def _read(self) -> Reading:
        nvml = self._module()
        try:
            if self.kind == "counter":
                return {f"gpu{self.index}": nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1e3}
            return {f"gpu{self.index}": nvml.nvmlDeviceGetPowerUsage(self._handle) / 1e3}
        except Exception as exc:  # the GPU fell off the bus, the driver was unloaded
            raise SensorLost(f"NVML read failed: {exc}") from None
