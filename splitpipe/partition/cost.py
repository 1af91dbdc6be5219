"""The cost model: link, transfer time, end-to-end latency and device energy of a split.

    e2e = head + encode + uplink transfer + round trip + decode + tail + downlink transfer

Transfer time is bytes / bandwidth (serialisation on the link); the round-trip time covers
propagation both ways once per frame. Device energy covers the whole frame: the device computes
(head, encode) at its loaded power, transmits at idle plus radio power, and waits at idle power
for the reply. Energy is always a prediction from a profile's power figures; it is labelled
with where those figures come from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from splitpipe.devices.profile import DeviceProfile
from splitpipe.errors import SplitpipeError

_RATE_UNITS = {"bit": 1e-6, "kbit": 1e-3, "mbit": 1.0, "gbit": 1e3, "kbps": 1e-3, "mbps": 1.0, "gbps": 1e3}
_TIME_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass(frozen=True)
class Link:
    bandwidth_mbps: float
    rtt_ms: float

    def tx_ms(self, nbytes: int) -> float:
        return nbytes * 8 / (self.bandwidth_mbps * 1e6) * 1e3

    def to_json(self) -> dict[str, float]:
        return {"bandwidth_mbps": self.bandwidth_mbps, "rtt_ms": self.rtt_ms}


def parse_rate(text: str) -> float:
    """``"20mbit"`` -> 20.0 (Mbit/s). Units: bit, kbit, mbit, gbit (or kbps, mbps, gbps)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]+)\s*", text)
    if not m or m.group(2).lower() not in _RATE_UNITS or float(m.group(1)) <= 0:
        raise SplitpipeError(
            f"invalid link rate {text!r}; expected a positive number with a unit: {', '.join(_RATE_UNITS)} (e.g. 20mbit)"
        )
    return float(m.group(1)) * _RATE_UNITS[m.group(2).lower()]


def parse_time_ms(text: str) -> float:
    """``"40ms"`` -> 40.0. Units: us, ms, s."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]+)\s*", text)
    if not m or m.group(2).lower() not in _TIME_UNITS:
        raise SplitpipeError(f"invalid time {text!r}; expected a number with a unit: us, ms, s (e.g. 40ms)")
    return float(m.group(1)) * _TIME_UNITS[m.group(2).lower()]


def parse_link(text: str) -> Link:
    """``"20mbit,10ms"``: bandwidth, then round-trip time."""
    parts = [p for p in text.split(",") if p.strip()]
    if len(parts) != 2:
        raise SplitpipeError(f"invalid link {text!r}; expected RATE,RTT such as 20mbit,10ms")
    return Link(parse_rate(parts[0]), parse_time_ms(parts[1]))


@dataclass(frozen=True)
class Stages:
    """Per-frame stage times (ms) and bytes of one way of running the model."""

    head_ms: float
    encode_ms: float
    tx_bytes: int
    decode_ms: float
    tail_ms: float
    reply_bytes: int


def end_to_end(stages: Stages, link: Link | None) -> dict[str, float]:
    """Transfer times and the end-to-end latency; ``link`` None means nothing is sent (local)."""
    if link is None:
        tx = rtt = reply = 0.0
    else:
        tx, rtt, reply = link.tx_ms(stages.tx_bytes), link.rtt_ms, link.tx_ms(stages.reply_bytes)
    e2e = stages.head_ms + stages.encode_ms + tx + rtt + stages.decode_ms + stages.tail_ms + reply
    return {"tx_ms": tx, "rtt_ms": rtt, "reply_ms": reply, "e2e_ms": e2e}


def device_energy_mj(stages: Stages, times: dict[str, float], device: DeviceProfile) -> float:
    """Device energy over one frame, mJ: busy while computing, radio on while sending, idle while waiting."""
    busy = stages.head_ms + stages.encode_ms
    sending = times["tx_ms"]
    waiting = times["e2e_ms"] - busy - sending
    return device.active_w * busy + (device.idle_w + device.radio_w) * sending + device.idle_w * waiting


def energy_source(device: DeviceProfile) -> str:
    if device.measured_power:
        return f"estimated from power measured on {device.name}"
    return f"estimated from public power figures of {device.name}"
