"""The cost model: link, transfer time, end-to-end latency and device energy of a split.

    e2e = head + encode + uplink transfer + round trip + decode + tail + downlink transfer

Pipelined, with ``window`` frames in flight (the agent's ``--window``), frames follow each
other as fast as the slowest stage lets them, the device (head + encode + the agent's own work
per frame, ``device_overhead_ms``), the uplink, the server (decode + tail) or the downlink,
each serving one frame at a time, and no faster than ``window`` frames per end-to-end latency
(Little's law):

    fps = min(1000 / slowest stage, window * 1000 / e2e)

Transfer time is bytes / bandwidth (serialisation on the link); the round-trip time covers
propagation both ways once per frame. Device energy covers the whole frame: the device computes
(head, encode) at its loaded power, transmits at idle plus radio power, and waits at idle power
for the reply. Energy is always a prediction from a profile's power figures; it is labelled
with where those figures come from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from splitpipe.devices.profile import DeviceProfile
from splitpipe.errors import SplitpipeError
from splitpipe.units import parse_duration_ms, parse_rate


@dataclass(frozen=True)
class Link:
    bandwidth_mbps: float
    rtt_ms: float

    def tx_ms(self, nbytes: int) -> float:
        return nbytes * 8 / (self.bandwidth_mbps * 1e6) * 1e3

    def to_json(self) -> dict[str, float]:
        return {"bandwidth_mbps": self.bandwidth_mbps, "rtt_ms": self.rtt_ms}


def parse_link(text: str) -> Link:
    """``"20mbit,10ms"``: bandwidth, then round-trip time."""
    parts = [p for p in text.split(",") if p.strip()]
    if len(parts) != 2:
        raise SplitpipeError(f"invalid link {text!r}; expected RATE,RTT such as 20mbit,10ms")
    rate = parse_rate(parts[0])
    if rate <= 0:
        raise SplitpipeError(f"invalid link {text!r}: the rate must be above 0 (e.g. 20mbit,10ms)")
    return Link(rate, parse_duration_ms(parts[1]))


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


def pipelined(
    stages: Stages, times: dict[str, float], window: int, device_overhead_ms: float = 0.0
) -> dict[str, float]:
    """The slowest stage of a pipelined agent (ms per frame) and the frames per second it allows."""
    stage = max(
        stages.head_ms + stages.encode_ms + device_overhead_ms,
        times["tx_ms"],
        stages.decode_ms + stages.tail_ms,
        times["reply_ms"],
    )
    fps = min(
        1e3 / stage if stage > 0 else math.inf,
        window * 1e3 / times["e2e_ms"] if times["e2e_ms"] > 0 else math.inf,
    )
    return {"stage_ms": stage, "fps": fps}


def predict(
    stages: Stages, link: Link | None, overhead_ms: float, window: int, device_overhead_ms: float
) -> dict[str, float]:
    """Every time that follows from ``stages``: the transfers and the end-to-end latency with the
    per-frame ``overhead_ms`` (:func:`end_to_end`), and the pipelined stage and frames/s."""
    times = end_to_end(stages, link)
    times["e2e_ms"] += overhead_ms
    return {**times, **pipelined(stages, times, window, device_overhead_ms)}


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
