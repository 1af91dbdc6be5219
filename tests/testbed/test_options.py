"""Parsing, validation and the tc/tbf parameters: plain data, no root needed."""

from __future__ import annotations

import pytest

from splitpipe.errors import SplitpipeError
from splitpipe.testbed import TestbedOptions, parse_duration_ms, parse_rate, parse_share
from splitpipe.testbed.link import qdisc_commands, relay_socket_buffer, tbf_params
from splitpipe.testbed.options import Names, cpu_quota
from splitpipe.testbed.relay import MIN_BUFFER_BYTES, RelayConfig


@pytest.mark.parametrize(
    ("text", "mbit"),
    [
        ("10mbit", 10.0),
        ("10Mbit", 10.0),
        ("500kbit", 0.5),
        ("1gbit", 1000.0),
        ("2.5", 2.5),
        ("64000bit", 0.064),
    ],
)
def test_parse_rate(text: str, mbit: float) -> None:
    assert parse_rate(text) == pytest.approx(mbit)


@pytest.mark.parametrize("text", ["10mbps", "fast", "", "-3mbit", "10 MB"])
def test_parse_rate_rejects_with_accepted_forms(text: str) -> None:
    with pytest.raises(SplitpipeError, match="accepted: a number with kbit, mbit or gbit"):
        parse_rate(text)


@pytest.mark.parametrize(("text", "ms"), [("40ms", 40.0), ("0.1s", 100.0), ("500us", 0.5), ("20", 20.0)])
def test_parse_duration(text: str, ms: float) -> None:
    assert parse_duration_ms(text) == pytest.approx(ms)


def test_parse_duration_rejects() -> None:
    with pytest.raises(SplitpipeError, match="bad duration '40 minutes'"):
        parse_duration_ms("40 minutes")


@pytest.mark.parametrize(("text", "share"), [("0.25", 0.25), ("25%", 0.25), ("1", 1.0)])
def test_parse_share(text: str, share: float) -> None:
    assert parse_share(text) == pytest.approx(share)


@pytest.mark.parametrize("text", ["quarter", "nan", "inf"])
def test_parse_share_rejects(text: str) -> None:
    with pytest.raises(SplitpipeError, match="CPU share"):
        parse_share(text)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Bad Name"}, "bad testbed name"),
        ({"name": "x" * 25}, "bad testbed name"),
        ({"rate_mbit": 0}, "link rate"),
        ({"rtt_ms": -1}, "round-trip time"),
        ({"device_cpu": 1.5}, "device CPU share"),
        ({"device_cpu": 0}, "device CPU share"),
        ({"delay": "tc"}, "unknown delay method 'tc'; accepted: auto, netem, relay"),
        ({"ports": (8001, 8001)}, "ports listed twice"),
        ({"ports": (5201,)}, "measurement probe"),
        ({"ports": (70000,)}, "port 70000 is out of range"),
    ],
)
def test_options_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(SplitpipeError, match=message):
        TestbedOptions(**kwargs)  # type: ignore[arg-type]


def test_cpu_quota_is_share_of_period_and_never_below_one_ms() -> None:
    assert TestbedOptions(device_cpu=0.25).cpu_quota() == (2500, 10_000)
    assert TestbedOptions(device_cpu=1.0).cpu_quota() == (None, 10_000)
    # the kernel refuses quotas under 1 ms: the period grows instead of the share changing
    quota, period = cpu_quota(0.05, 10_000)
    assert quota == 1000 and period == 20_000


def test_names_derive_from_the_testbed_name() -> None:
    n = Names("abc")
    assert n.netns("device") == "splitpipe-abc-device"
    assert n.netns("server") == "splitpipe-abc-server"
    assert n.cgroup("device") == "splitpipe-abc-device"
    assert str(n.state_dir) == "/run/splitpipe-testbed/abc"
    with pytest.raises(SplitpipeError, match="unknown side 'phone'; accepted: device, server"):
        n.netns("phone")


def test_tbf_burst_is_one_frame_and_two_ms_of_rate() -> None:
    assert tbf_params(2, 40, netem=False).burst_bytes == 1514 + 500
    assert tbf_params(50, 40, netem=False).burst_bytes == 1514 + 12_500


def test_relay_socket_buffers_keep_in_flight_data_below_the_queue() -> None:
    for rate in (0.5, 2, 10, 50, 200, 1000):
        limit = tbf_params(rate, 0, netem=False).limit_bytes
        # doubled by the kernel, plus one 64 KiB TSO packet of overshoot
        assert 2 * relay_socket_buffer(rate) + 64 * 1024 < limit


def test_netem_queue_holds_a_bandwidth_delay_product() -> None:
    p = tbf_params(50, 200, netem=True)
    assert p.limit_bytes >= 50e6 / 8 * 0.2


def test_qdisc_commands_tbf_only_and_with_netem() -> None:
    (cmd,) = qdisc_commands("ns", "eth", 10, 40, netem=False)
    assert cmd == [
        "tc",
        "-n",
        "ns",
        "qdisc",
        "replace",
        "dev",
        "eth",
        "root",
        "tbf",
        "rate",
        "10000000bit",
        "burst",
        "4014",
        "limit",
        str(128 * 1024),
    ]
    root, child = qdisc_commands("ns", "eth", 10, 40, netem=True)
    assert root[7:] == ["root", "handle", "1:", "netem", "delay", "20ms", "limit", "1000"]
    assert child[7:11] == ["parent", "1:1", "handle", "10:"] and "tbf" in child


def test_relay_config_for_link() -> None:
    cfg = RelayConfig.for_link(50, 40)
    assert cfg.one_way_delay_ms == 20
    assert cfg.buffer_bytes == 2 * int(50e6 / 8 * 0.02)
    assert RelayConfig.for_link(2, 10).buffer_bytes == MIN_BUFFER_BYTES
    assert cfg.socket_buffer_bytes == relay_socket_buffer(50)
