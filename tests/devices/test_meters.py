"""Power meters against fake sysfs trees and recorded command outputs (tests/fixtures/devices).

The meters run for real (sampling thread, files, subprocesses); only the sensor is a stand-in:
a copy of a recorded sysfs tree, or a script replaying a recorded tegrastats/vcgencmd output.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from splitpipe.devices.meters import (
    EnergySample,
    EstimatedMeter,
    Ina3221Meter,
    NullMeter,
    NvmlMeter,
    Pi5PmicMeter,
    RaplMeter,
    TegrastatsMeter,
    available_meters,
    create_meter,
    detect_meter,
    meter_names,
    parse_pmic_adc,
    parse_tegrastats_line,
)
from splitpipe.devices.meters.jetson import tegrastats_log_energy
from splitpipe.devices.profile import load_profile
from splitpipe.errors import SplitpipeError, UnavailableError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "devices"
COMMANDS = FIXTURES / "commands"
REPLAY = [sys.executable, str(COMMANDS / "replay.py")]


def tree(name: str, tmp_path: Path) -> Path:
    """A private copy of a recorded sysfs tree (tests change and delete files in it)."""
    dest = tmp_path / name
    shutil.copytree(FIXTURES / "sysfs" / name, dest)
    return dest


def put(path: Path, value: float | int) -> None:
    """Replace a sysfs value atomically, as the kernel does: a reader never sees half a write."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(f"{value}\n")
    os.replace(tmp, path)


def run_for(meter, seconds: float) -> EnergySample:
    meter.start()
    time.sleep(seconds)
    return meter.stop()


# -- INA3221 -------------------------------------------------------------------------------


def test_ina3221_hwmon_orin_nano_reads_vdd_in(tmp_path: Path) -> None:
    meter = Ina3221Meter(root=tree("jetson-orin-nano", tmp_path), rate_hz=200)
    assert meter.is_available()
    # the "sum of shunt voltages" channel has no current and is not a rail
    assert meter.rails == ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"]
    sample = run_for(meter, 0.15)
    assert sample.source == "ina3221:VDD_IN"
    assert sample.measured and sample.energy_source == "measured"
    assert sample.complete and sample.samples >= 3
    watts = 5.072 * 0.987
    assert sample.mean_w == pytest.approx(watts, rel=1e-9)
    assert sample.joules == pytest.approx(watts * sample.covered_s, rel=1e-9)
    assert sample.covered_s == pytest.approx(sample.duration_s, abs=0.01)
    assert set(sample.rails) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}
    assert "uncalibrated" in sample.note


def test_ina3221_trapezoid_follows_a_step(tmp_path: Path) -> None:
    root = tree("jetson-orin-nano", tmp_path)
    hwmon = next(root.glob("sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*"))
    meter = Ina3221Meter(root=root, rate_hz=200)
    meter.start()
    time.sleep(0.1)
    put(hwmon / "curr1_input", 1974)  # power doubles
    time.sleep(0.1)
    sample = meter.stop()
    low, high = 5.072 * 0.987, 5.072 * 1.974
    assert low * sample.covered_s < sample.joules < high * sample.covered_s
    assert low < sample.mean_w < high


def test_ina3221_hwmon_number_is_globbed(tmp_path: Path) -> None:
    root = tree("jetson-orin-nano", tmp_path)
    hwmon = next(root.glob("sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*"))
    hwmon.rename(hwmon.with_name("hwmon7"))  # another boot, another number
    assert Ina3221Meter(root=root).unavailable_reason() is None


def test_ina3221_iio_nano_reads_pom_5v_in(tmp_path: Path) -> None:
    meter = Ina3221Meter(root=tree("jetson-nano", tmp_path), rate_hz=100)
    sample = run_for(meter, 0.1)
    assert sample.source == "ina3221:POM_5V_IN"
    assert sample.mean_w == pytest.approx(2.478)
    assert meter.rails == ["POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"]


def test_ina3221_agx_orin_sums_rails_without_total(tmp_path: Path) -> None:
    root = tree("jetson-agx-orin", tmp_path)
    expected = (19.968 * 0.152) + (19.968 * 0.040) + (4.968 * 0.720) + (4.984 * 0.104)
    auto = Ina3221Meter(root=root, rate_hz=100)
    sample = run_for(auto, 0.1)
    assert "NC" not in auto.rails
    assert sample.mean_w == pytest.approx(expected)
    assert "no total-input rail" in sample.note
    # the profile names the rails to sum: same figure, no warning about the choice
    profile = load_profile("jetson-agx-orin")
    named = create_meter("ina3221", profile=profile, root=root, rate_hz=100)
    sample = run_for(named, 0.1)
    assert sample.mean_w == pytest.approx(expected)
    assert "no total-input rail" not in sample.note


def test_ina3221_missing_rail(tmp_path: Path) -> None:
    root = tree("jetson-missing-rail", tmp_path)
    # VDD_IN has no curr1_input: skipped and said so; the total falls back to the sum of the rest
    meter = Ina3221Meter(root=root, rate_hz=100)
    sample = run_for(meter, 0.1)
    assert meter.rails == ["VDD_CPU_GPU_CV", "VDD_SOC"]
    assert "rail VDD_IN skipped: curr1_input missing" in sample.note
    assert sample.mean_w == pytest.approx(5.072 * (0.120 + 0.290))
    # asking for the missing rail by name is an error that says what exists
    reason = Ina3221Meter(root=root, rails=["VDD_IN"]).unavailable_reason()
    assert reason is not None and "VDD_IN" in reason and "VDD_SOC" in reason
    with pytest.raises(UnavailableError, match="not found"):
        Ina3221Meter(root=root, rails=["VDD_IN"]).start()


def test_ina3221_sensor_disappears_mid_run(tmp_path: Path) -> None:
    root = tree("jetson-orin-nano", tmp_path)
    meter = Ina3221Meter(root=root, rate_hz=200)
    meter.start()
    time.sleep(0.1)
    shutil.rmtree(root / "sys")  # the driver unbinds, the files vanish
    time.sleep(0.1)
    sample = meter.stop()  # no exception
    assert not sample.complete
    assert "sensor lost" in sample.note and "FileNotFoundError" in sample.note
    assert 0.05 < sample.covered_s < sample.duration_s
    assert sample.joules == pytest.approx(5.072 * 0.987 * sample.covered_s, rel=1e-9)
    assert sample.measured


def test_ina3221_calibration_and_snapshot(tmp_path: Path) -> None:
    meter = Ina3221Meter(root=tree("jetson-orin-nano", tmp_path), calibration=1.25, rate_hz=100)
    meter.start()
    time.sleep(0.05)
    first = meter.snapshot()
    time.sleep(0.05)
    sample = meter.stop()
    assert sample.mean_w == pytest.approx(5.072 * 0.987 * 1.25)
    assert 0 < first.joules < sample.joules
    assert "x 1.25" in sample.note
    with pytest.raises(SplitpipeError, match="calibration"):
        Ina3221Meter(calibration=0)


def test_ina3221_absent_says_not_a_jetson(tmp_path: Path) -> None:
    reason = Ina3221Meter(root=tmp_path).unavailable_reason()
    assert reason is not None and "not a Jetson" in reason
    with pytest.raises(UnavailableError, match="not a Jetson"):
        Ina3221Meter(root=tmp_path).start()


# -- tegrastats ----------------------------------------------------------------------------


def test_parse_tegrastats_formats() -> None:
    nano = (COMMANDS / "tegrastats-jetson-nano.txt").read_text().splitlines()[0]
    orin = (COMMANDS / "tegrastats-jetson-orin-nano.txt").read_text().splitlines()[0]
    assert parse_tegrastats_line(nano) == {
        "POM_5V_IN": (2.478, 2.478),
        "POM_5V_GPU": (0.04, 0.04),
        "POM_5V_CPU": (0.322, 0.322),
    }
    assert parse_tegrastats_line(orin) == {
        "VDD_IN": (5.012, 5.012),
        "VDD_CPU_GPU_CV": (0.59, 0.59),
        "VDD_SOC": (1.455, 1.455),
    }
    agx = parse_tegrastats_line((COMMANDS / "tegrastats-jetson-agx-orin.txt").read_text().splitlines()[0])
    assert "NC" not in agx and set(agx) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"}
    # memory figures look alike (RAM 1735/3964MB) but are not power
    assert parse_tegrastats_line("RAM 1735/3964MB (lfb 287x4MB) SWAP 0/1982MB IRAM 0/252kB") == {}


def test_tegrastats_log_energy() -> None:
    lines = (COMMANDS / "tegrastats-jetson-nano.txt").read_text().splitlines()
    sample = tegrastats_log_energy(lines, interval_s=1.0)
    watts = [2.478, 2.600, 4.871, 4.952, 2.640]
    assert sample.joules == pytest.approx(sum((a + b) / 2 for a, b in itertools.pairwise(watts)))
    assert sample.duration_s == 4.0 and sample.source == "tegrastats-log:POM_5V_IN"
    with pytest.raises(SplitpipeError, match="no power rails"):
        tegrastats_log_energy(["RAM 1/2MB"], interval_s=1.0)


def test_tegrastats_meter_replays_orin(tmp_path: Path) -> None:
    command = [*REPLAY, str(COMMANDS / "tegrastats-jetson-orin-nano.txt"), "--stream", "--interval-ms", "20"]
    meter = TegrastatsMeter(command=command, interval_ms=20, rate_hz=100)
    assert meter.is_available()
    sample = run_for(meter, 0.4)
    assert sample.source == "tegrastats:VDD_IN" and sample.measured and sample.complete
    assert 5.012 <= sample.mean_w <= 12.010  # between the recorded extremes


def test_tegrastats_meter_process_exits_mid_run(tmp_path: Path) -> None:
    command = [
        *REPLAY,
        str(COMMANDS / "tegrastats-jetson-nano.txt"),
        "--stream",
        "--interval-ms",
        "50",
        "--count",
        "6",
    ]
    meter = TegrastatsMeter(command=command, interval_ms=50, rate_hz=100)
    sample = run_for(meter, 0.8)
    assert not sample.complete and "tegrastats stopped" in sample.note
    assert sample.covered_s < sample.duration_s
    assert sample.source == "tegrastats:POM_5V_IN"


def test_tegrastats_missing() -> None:
    reason = TegrastatsMeter(command=["/nonexistent/tegrastats"]).unavailable_reason()
    assert reason is not None and "not found" in reason


# -- Raspberry Pi 5 PMIC ---------------------------------------------------------------------


def test_parse_pmic_adc() -> None:
    watts, unpaired = parse_pmic_adc((COMMANDS / "vcgencmd-pmic_read_adc-pi5.txt").read_text())
    assert watts["VDD_CORE"] == pytest.approx(0.77 * 0.72)
    assert len(watts) == 12
    # the 5 V input has a voltage and no current: it cannot be counted
    assert unpaired == ["BATT", "EXT5V"]
    assert sum(watts.values()) == pytest.approx(1.5235, abs=1e-3)


def test_pi5_meter_sums_rails_and_says_what_it_misses() -> None:
    meter = Pi5PmicMeter(command=[*REPLAY, str(COMMANDS / "vcgencmd-pmic_read_adc-pi5.txt")], rate_hz=20)
    assert meter.is_available()
    sample = run_for(meter, 0.3)
    assert sample.mean_w == pytest.approx(1.5235, abs=1e-3)
    assert "5 V input current is not reported" in sample.note
    assert sample.source == "pi5-pmic:sum" and sample.measured


def test_pi5_meter_on_a_pi4() -> None:
    meter = Pi5PmicMeter(command=[*REPLAY, str(COMMANDS / "vcgencmd-pmic_read_adc-pi4.txt")])
    reason = meter.unavailable_reason()
    assert reason is not None and "not a Raspberry Pi 5" in reason


def test_pi5_meter_command_starts_failing(tmp_path: Path) -> None:
    state = tmp_path / "calls"
    command = [
        *REPLAY,
        str(COMMANDS / "vcgencmd-pmic_read_adc-pi5.txt"),
        "--fail-after",
        "4",
        "--state",
        str(state),
    ]
    meter = Pi5PmicMeter(command=command, rate_hz=20)
    assert meter.is_available()  # call 1
    sample = run_for(meter, 0.6)  # calls 2-4 succeed, then vcgencmd fails
    assert not sample.complete and "sensor lost" in sample.note and "exited 1" in sample.note
    assert sample.samples == 3
    assert sample.joules == pytest.approx(sample.mean_w * sample.covered_s)


# -- RAPL ----------------------------------------------------------------------------------


def test_rapl_domains_and_wraparound(tmp_path: Path) -> None:
    root = tree("rapl", tmp_path)
    zones = root / "sys/class/powercap"
    meter = RaplMeter(root=root, rate_hz=50)
    assert meter.is_available()
    meter.start()
    assert meter.source == "rapl:package-0+package-0/dram"  # psys and core are not summed
    time.sleep(0.05)
    max_uj = 262143328850
    start_uj = 261000000000
    # the package counter passes its maximum and wraps to a small value
    put(zones / "intel-rapl:0/energy_uj", max_uj - 1000)
    time.sleep(0.05)
    put(zones / "intel-rapl:0/energy_uj", 2_000_000)
    put(zones / "intel-rapl:0:1/energy_uj", 5_500_000)
    time.sleep(0.05)
    sample = meter.stop()
    package_j = ((max_uj - start_uj) + 2_000_000) / 1e6
    assert sample.rails["package-0"] == pytest.approx(package_j)
    assert sample.rails["package-0/dram"] == pytest.approx(0.5)
    assert sample.joules == pytest.approx(package_j + 0.5)
    assert sample.complete and sample.measured
    assert "CPU package" in sample.note


def test_rapl_selected_domain(tmp_path: Path) -> None:
    meter = RaplMeter(root=tree("rapl", tmp_path), domains=["psys"])
    assert meter.is_available()
    meter.start()
    meter.stop()
    assert meter.source == "rapl:psys"


def test_rapl_absent(tmp_path: Path) -> None:
    reason = RaplMeter(root=tmp_path).unavailable_reason()
    assert reason is not None and "no Intel RAPL zones" in reason


def test_rapl_root_only_reason(tmp_path: Path) -> None:
    """energy_uj is mode 0400 since Linux 5.10: an unprivileged user gets the reason."""
    if os.geteuid() == 0:
        # root reads anything: ask in a forked child that dropped to user nobody, on a
        # world-readable copy of the tree whose energy_uj files are 0400 as on Linux >= 5.10
        base = Path(tempfile.mkdtemp(prefix="rapl-"))
        try:
            shutil.copytree(FIXTURES / "sysfs" / "rapl", base / "t")
            for path in [base, *base.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o444)
            for energy in base.rglob("energy_uj"):
                energy.chmod(0o400)
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # child: no pytest machinery, report through the pipe and leave
                try:
                    os.setgid(65534)
                    os.setuid(65534)
                    answer = RaplMeter(root=base / "t").unavailable_reason()
                    os.write(write_end, json.dumps(answer).encode())
                finally:
                    os._exit(0)
            os.close(write_end)
            with os.fdopen(read_end) as pipe:
                reason = json.loads(pipe.read() or "null")
            os.waitpid(pid, 0)
        finally:
            shutil.rmtree(base)
    else:
        root = tree("rapl", tmp_path)
        for energy in root.rglob("energy_uj"):
            energy.chmod(0o000)
        reason = RaplMeter(root=root).unavailable_reason()
    assert reason is not None and "root only since Linux 5.10" in reason


# -- NVML (the binding is injected: no GPU here) ---------------------------------------------


class _NotSupported(Exception):
    pass


def fake_nvml(counter: bool, fail_after: int = 10**9) -> SimpleNamespace:
    state = {"mj": 1_000_000, "calls": 0}

    def energy(_handle: object) -> int:
        if not counter:
            raise _NotSupported("Not Supported")
        state["calls"] += 1
        if state["calls"] > fail_after:
            raise RuntimeError("GPU is lost")
        state["mj"] += 250  # 250 mJ between readings
        return state["mj"]

    return SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: ("gpu", i),
        nvmlDeviceGetTotalEnergyConsumption=energy,
        nvmlDeviceGetPowerUsage=lambda _h: 70_000,
        state=state,
    )


def test_nvml_energy_counter_difference() -> None:
    nvml = fake_nvml(counter=True)
    meter = NvmlMeter(nvml=nvml, rate_hz=50)
    assert meter.is_available() and meter.kind == "counter"
    sample = run_for(meter, 0.1)
    # every reading after the first adds 0.25 J
    assert sample.joules == pytest.approx(0.25 * (sample.samples - 1))
    assert "energy counter" in sample.source


def test_nvml_power_samples_where_no_counter() -> None:
    meter = NvmlMeter(nvml=fake_nvml(counter=False), rate_hz=50)
    assert meter.is_available() and meter.kind == "power"
    sample = run_for(meter, 0.1)
    assert sample.mean_w == pytest.approx(70.0)


def test_nvml_gpu_lost_mid_run() -> None:
    meter = NvmlMeter(nvml=fake_nvml(counter=True, fail_after=4), rate_hz=100)
    sample = run_for(meter, 0.2)
    assert not sample.complete and "GPU is lost" in sample.note


def test_nvml_without_pynvml() -> None:
    reason = NvmlMeter().unavailable_reason()
    try:
        import pynvml  # noqa: F401
    except ImportError:
        assert reason is not None and "pynvml" in reason


# -- estimates, null, detection --------------------------------------------------------------


def test_estimated_meter_is_labelled_and_bounded() -> None:
    profile = load_profile("rpi4")
    meter = EstimatedMeter(profile, rate_hz=50)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    worker = threading.Thread(target=spin)
    meter.start()
    worker.start()
    time.sleep(0.3)
    sample = meter.stop()
    stop.set()
    worker.join()
    assert not sample.measured and sample.energy_source == "estimated"
    assert sample.source == "estimated:rpi4" and "estimated, not measured" in sample.note
    assert profile.idle_w <= sample.mean_w <= profile.active_w
    assert sample.joules == pytest.approx(sample.mean_w * sample.covered_s)


def test_estimated_meter_process_scope_and_bad_scope() -> None:
    sample = run_for(EstimatedMeter(load_profile("jetson-nano"), scope="process", rate_hz=50), 0.1)
    assert 1.25 <= sample.mean_w <= 10.0 and "process CPU" in sample.note
    with pytest.raises(SplitpipeError, match="accepted: system, process"):
        EstimatedMeter(scope="gpu")


def test_null_meter() -> None:
    sample = run_for(NullMeter(), 0.01)
    assert sample.joules == 0 and not sample.measured and sample.source == "none"
    assert json.loads(json.dumps(sample.to_json()))["energy_source"] == "estimated"


def test_detect_meter(tmp_path: Path) -> None:
    orin = tree("jetson-orin-nano", tmp_path)
    assert isinstance(detect_meter(root=orin), Ina3221Meter)
    # this machine has no sensor: the estimate, labelled so (or the null meter if refused)
    empty = tmp_path / "empty"
    empty.mkdir()
    here = detect_meter(load_profile("rpi4"), root=empty)
    if isinstance(here, EstimatedMeter):
        assert not here.measured and here.source == "estimated:rpi4"
    assert isinstance(
        detect_meter(root=empty, allow_estimate=False), (NullMeter, NvmlMeter, TegrastatsMeter, Pi5PmicMeter)
    )


def test_available_meters_says_why_not(tmp_path: Path) -> None:
    found = available_meters(root=tmp_path)
    assert list(found) == meter_names()
    assert found["estimated"] is None and found["null"] is None
    assert found["ina3221"] and found["rapl"]


def test_create_meter_errors(tmp_path: Path) -> None:
    with pytest.raises(SplitpipeError, match="unknown meter 'joulemeter'; accepted: ina3221"):
        create_meter("joulemeter")
    with pytest.raises(UnavailableError, match="meter 'rapl' is unavailable"):
        create_meter("rapl", root=tmp_path)
    with pytest.raises(SplitpipeError, match="rate_hz"):
        NullMeter(rate_hz=0)


def test_stop_without_start() -> None:
    with pytest.raises(RuntimeError, match="without start"):
        NullMeter().stop()


def test_snapshots_from_another_thread_and_restart(tmp_path: Path) -> None:
    """The agent takes snapshots per frame while the thread samples; a meter can run again."""
    meter = Ina3221Meter(root=tree("jetson-orin-nano", tmp_path), rate_hz=500)
    for _ in range(2):
        meter.start()
        seen = [meter.snapshot().joules for _ in range(50)]
        sample = meter.stop()
        assert seen == sorted(seen) and seen[-1] <= sample.joules
        assert sample.joules == pytest.approx(5.072 * 0.987 * sample.covered_s, rel=1e-9)
        assert sample.complete
