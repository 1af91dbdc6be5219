"""The real testbed: namespaces, tbf, the delay relay, cgroups (root only; skipped elsewhere).

Each test builds testbeds with names unique to this run and removes them in a finalizer, so
a failing test leaves nothing behind. The whole module takes about half a minute.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from splitpipe.errors import SplitpipeError
from splitpipe.testbed import LinkMeasurement, Testbed, TestbedOptions
from splitpipe.testbed.cgroups import CpuGroup, detect
from splitpipe.testbed.link import netns_exists

pytestmark = pytest.mark.testbed

_RUN = f"t{os.getpid() % 100_000}"
MakeTestbed = Callable[..., Testbed]


def _gone(name: str) -> bool:
    """Nothing of testbed ``name`` exists: namespaces, cgroups, state directory."""
    tb = Testbed(name=name)
    layout = detect()
    return (
        not any(netns_exists(tb.names.netns(s)) for s in ("device", "server"))
        and not any(CpuGroup(layout, tb.names.cgroup(s)).exists() for s in ("device", "server"))
        and not tb.names.state_dir.exists()
    )


@pytest.fixture
def make_testbed() -> Iterator[MakeTestbed]:
    made: list[Testbed] = []

    def make(tag: str, **kwargs: object) -> Testbed:
        tb = Testbed(TestbedOptions(name=f"{_RUN}{tag}", **kwargs))  # type: ignore[arg-type]
        made.append(tb)
        return tb

    yield make
    for tb in made:
        tb.down()
        assert _gone(tb.names.name)


@pytest.fixture(scope="module")
def bed() -> Iterator[Testbed]:
    """10 Mbit/s, 40 ms, a quarter of a core: built and measured once for several tests."""
    tb = Testbed(TestbedOptions(name=f"{_RUN}m", rate_mbit=10, rtt_ms=40, device_cpu=0.25))
    try:
        tb.up()
        yield tb
    finally:
        tb.down()
        assert _gone(tb.names.name)


def _until(
    first: LinkMeasurement,
    again: Callable[[], LinkMeasurement],
    ok: Callable[[list[LinkMeasurement]], bool],
    tries: int = 3,
) -> list[LinkMeasurement]:
    """Measure again (up to ``tries`` in all) until ``ok``.

    Shaping sets ceilings: tbf caps the rate, the relay never delivers early, the quota caps
    the CPU share. Other work on a shared machine (or its host) can only push a measurement
    below the rate, above the delay, below the share, so the best of a few estimates the
    setting, while every one of them must respect the ceiling.
    """
    ms = [first]
    while not ok(ms) and len(ms) < tries:
        ms.append(again())
    return ms


def _rate_ok(set_mbit: float) -> Callable[[list[LinkMeasurement]], bool]:
    def ok(ms: list[LinkMeasurement]) -> bool:
        return (
            max(m.uplink_mbit or 0 for m in ms) >= 0.85 * set_mbit
            and max(m.downlink_mbit or 0 for m in ms) >= 0.85 * set_mbit
        )

    return ok


def _check_rate(ms: list[LinkMeasurement], set_mbit: float) -> None:
    for m in ms:
        assert m.uplink_mbit is not None and m.downlink_mbit is not None
        assert m.uplink_mbit <= 1.02 * set_mbit and m.downlink_mbit <= 1.02 * set_mbit, ms
    assert max(m.uplink_mbit or 0 for m in ms) == pytest.approx(set_mbit, rel=0.15), ms
    assert max(m.downlink_mbit or 0 for m in ms) == pytest.approx(set_mbit, rel=0.15), ms


def _check_rtt(ms: list[LinkMeasurement], set_ms: float) -> None:
    for m in ms:
        assert m.rtt_min_ms is not None and m.rtt_min_ms >= set_ms, ms
    assert min(m.rtt_ms or 1e9 for m in ms) <= set_ms + 3, ms


def test_up_measures_rate_rtt_and_cpu(bed: Testbed) -> None:
    m = bed.last_measurement
    assert isinstance(m, LinkMeasurement) and m.measured and m.seconds < 10
    link = _until(
        m,
        lambda: bed.measure(cpu=False),
        lambda ms: _rate_ok(10)(ms) and min(x.rtt_ms or 1e9 for x in ms) <= 43,
    )
    _check_rate(link, 10)
    _check_rtt(link, 40)
    cpu = _until(
        m,
        lambda: bed.measure(rate=False, rtt=False),
        lambda ms: max(x.device_cpu_share or 0 for x in ms) >= 0.21,
    )
    assert all(x.device_cpu_share is not None and x.device_cpu_share <= 0.29 for x in cpu), cpu
    assert max(x.device_cpu_share or 0 for x in cpu) >= 0.21, cpu
    assert all(x.device_slowdown is not None and x.device_slowdown > 2 for x in cpu), cpu


def test_status_shows_what_exists(bed: Testbed) -> None:
    st = bed.status()
    assert st.up and st.delay_method in ("netem", "relay")
    dev, srv = st.sides["device"], st.sides["server"]
    assert dev.quota_us == 2500 and dev.period_us == 10_000 and dev.cpus == "0"
    assert srv.quota_us is None and srv.cpus == "1"
    assert any("tbf" in q and "10Mbit" in q for q in dev.qdiscs)
    assert any("tbf" in q and "10Mbit" in q for q in srv.qdiscs)
    assert st.measurement == bed.last_measurement
    if st.delay_method == "relay":
        assert all(pid is not None for pid in st.relays.values())


def test_run_executes_in_the_namespace_and_cgroup(bed: Testbed) -> None:
    dev = bed.run("device", ["ip", "-br", "addr"], capture_output=True, text=True, check=True).stdout
    assert "sp-device" in dev and "10.77.0.1/30" in dev and "sp-server" not in dev
    srv = bed.run("server", ["ip", "-br", "addr"], capture_output=True, text=True, check=True).stdout
    assert "sp-server" in srv and "10.77.0.2/30" in srv
    cg = bed.run("device", ["cat", "/proc/self/cgroup"], capture_output=True, text=True).stdout
    assert f"/{bed.names.cgroup('device')}" in cg
    free = bed.run(
        "device", ["cat", "/proc/self/cgroup"], cgroup=False, capture_output=True, text=True
    ).stdout
    assert bed.names.cgroup("device") not in free
    assert bed.run("server", ["sh", "-c", "exit 7"]).returncode == 7


def test_a_real_server_through_the_delay(bed: Testbed, tmp_path: Path) -> None:
    """An HTTP server on the server side, fetched from the device side through server_address."""
    (tmp_path / "hello.txt").write_text("hello from the server side\n")
    port = 18080 + os.getpid() % 1000
    address = bed.add_port(port)
    assert bed.server_address(port) == address
    server = bed.popen(
        "server",
        [sys.executable, "-m", "http.server", str(port), "--bind", "10.77.0.2"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        fetch = (
            "import time, urllib.request\n"
            "for _ in range(100):\n"
            "    try:\n"
            "        t = time.perf_counter()\n"
            f"        body = urllib.request.urlopen('http://{address}/hello.txt', timeout=5).read()\n"
            "        break\n"
            "    except OSError:\n"
            "        time.sleep(0.05)\n"
            "print(round((time.perf_counter() - t) * 1000), body.decode(), end='')\n"
        )
        out = bed.run("device", [sys.executable, "-c", fetch], capture_output=True, text=True, timeout=30)
        ms, body = out.stdout.split(" ", 1)
        assert body == "hello from the server side\n"
        # a fresh connection: handshake, then request and response, 2 RTTs at the least
        assert int(ms) >= 80
    finally:
        server.terminate()
        server.wait(timeout=5)


def test_unrelayed_port_is_a_clear_error(bed: Testbed) -> None:
    if bed.delay_method != "relay":
        pytest.skip("netem: every port is reachable directly")
    with pytest.raises(SplitpipeError, match="port 9 has no delay relay; relayed ports"):
        bed.server_address(9)


def test_set_changes_rate_rtt_and_cpu(make_testbed: MakeTestbed) -> None:
    tb = make_testbed("s", rate_mbit=50, rtt_ms=20)
    tb.up(measure=False)

    def link() -> LinkMeasurement:
        return tb.measure(cpu=False)

    ms = _until(link(), link, lambda ms: _rate_ok(50)(ms) and min(x.rtt_ms or 1e9 for x in ms) <= 23)
    _check_rate(ms, 50)
    _check_rtt(ms, 20)
    m = tb.set_rate(2)
    assert m is not None and m.rate_set_mbit == 2
    _check_rate(_until(m, lambda: tb.measure(rtt=False, cpu=False), _rate_ok(2)), 2)
    tb.set(device_cpu=0.5, rtt_ms=40, measure=False)
    assert tb.group("device").quota() == (5000, 10_000)
    ms = _until(link(), link, lambda ms: min(x.rtt_ms or 1e9 for x in ms) <= 43)
    _check_rtt(ms, 40)
    # another process (as the CLI is) sees the changes
    attached = Testbed.attach(tb.names.name)
    assert attached.options.rate_mbit == 2 and attached.options.rtt_ms == 40
    assert attached.options.device_cpu == 0.5


def test_up_twice_then_down_twice(make_testbed: MakeTestbed) -> None:
    tb = make_testbed("i", rate_mbit=20, rtt_ms=10)
    tb.up(measure=False)
    before = tb.status()
    tb.up(measure=False)  # replaces the first one
    after = tb.status()
    assert before.up and after.up
    if after.delay_method == "relay":
        assert set(before.relays.values()).isdisjoint(after.relays.values())
    removed = tb.down()
    assert any(r.startswith("netns") for r in removed) and any(r.startswith("cgroup") for r in removed)
    assert _gone(tb.names.name)
    assert tb.down() == []
    assert not tb.status().up and not tb.status().leftovers


def test_down_cleans_up_after_a_crash(make_testbed: MakeTestbed) -> None:
    tb = make_testbed("c", rate_mbit=10, rtt_ms=20, device_cpu=0.5)
    tb.up(measure=False)
    sleeper = tb.popen("device", ["sleep", "600"], start_new_session=True)
    # its shell joins the cgroup a moment after the fork; a crash comes long after that
    deadline = time.monotonic() + 10
    while sleeper.pid not in tb.group("device").pids():
        assert time.monotonic() < deadline, "the sleeper never joined the device cgroup"
        time.sleep(0.01)
    relays = [p for p in tb.status().relays.values() if p is not None]
    for pid in relays:
        os.kill(pid, signal.SIGKILL)
    # the process that ran `up` is gone, and so is its state
    for f in tb.names.state_dir.iterdir():
        f.unlink()
    tb.names.state_dir.rmdir()
    assert Testbed(name=tb.names.name).status().leftovers
    removed = Testbed(name=tb.names.name).down()
    assert any(r.endswith("process(es)") for r in removed)
    assert sleeper.wait(timeout=5) in (-signal.SIGTERM, -signal.SIGKILL)
    assert _gone(tb.names.name)


def test_down_cleans_up_a_half_built_testbed(make_testbed: MakeTestbed) -> None:
    """As if `up` had died after creating a namespace and a cgroup."""
    tb = make_testbed("h")
    subprocess.run(["ip", "netns", "add", tb.names.device_ns], check=True)
    CpuGroup(detect(), tb.names.cgroup("device")).create("0", None, 10_000)
    assert not tb.status().up and tb.status().leftovers
    tb.down()
    assert _gone(tb.names.name)


def test_attach_to_nothing_is_a_clear_error() -> None:
    with pytest.raises(SplitpipeError, match=f"no testbed named '{_RUN}none' is up"):
        Testbed.attach(f"{_RUN}none")


def test_a_failing_link_probe_is_tried_twice_then_names_both(make_testbed: MakeTestbed) -> None:
    tb = make_testbed("p", rate_mbit=10, rtt_ms=10)
    tb.up(measure=False)
    if tb.delay_method != "relay":
        pytest.skip("netem: no relay to take away")
    pid = tb.status().relays[tb.options.probe_port]
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(SplitpipeError) as err:
        tb.measure(cpu=False)
    message = str(err.value)
    assert message.count("probe link failed (exit 1): rtt_ms failed after") == 2
    assert "ConnectionRefusedError" in message and "the try before" in message
    assert "\n" not in message
