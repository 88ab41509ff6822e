"""Measurements with error bars (issue 12, part 3): the median's interval and its coverage, the stopping rule
on a quiet and on a noisy device, warm-up until the timings settle, clocks read before and after (a slow
governor and a hot board warned of), pinning to cores, and comparisons that say whether a difference is
beyond the noise."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from edgekit.cli.main import main
from edgekit.errors import RemoteCommandError
from edgekit.measure.board_state import board_warnings, stopping_warnings
from edgekit.measure.compare import compare_artifacts, compare_rounds
from edgekit.measure.stats import summarize
from edgekit.onboard import runner
from edgekit.onboard.order_stats import half_width_ratio, median_ci, median_ci_ranks
from edgekit.run import run_artifact

NOISY_RUNNER = Path(__file__).resolve().parent.parent / "edgekit" / "testing" / "noisy_runner.py"


def ssh_args(device) -> list[str]:
    return ["--host", device.host_spec, "-i", str(device.client_key), "--known-hosts", str(device.known_hosts),
            "--no-agent"]


# ---------------------------------------------------------------- the interval, on synthetic samples


@pytest.mark.parametrize("name, draw, true_median", [
    ("lognormal", lambda r: r.lognormvariate(0.0, 0.5), 1.0),
    ("exponential", lambda r: r.expovariate(1.0), 0.6931471805599453),
    # a latency-like mixture: most runs fast, 30% delayed; the median sits in the fast mode
    ("bimodal", lambda r: r.gauss(1.0, 0.02) if r.random() < 0.7 else r.gauss(1.5, 0.1), None),
])
@pytest.mark.parametrize("n", [6, 11, 50, 200])
def test_the_median_interval_covers_the_true_median_at_its_stated_confidence(name, draw, true_median, n):
    rng = random.Random(1234 + n)
    if true_median is None:  # the mixture's median, from a very large sample
        big_rng = random.Random(99)
        big = sorted(draw(big_rng) for _ in range(200_000))
        true_median = big[len(big) // 2]
    trials, covered = 1500, 0
    for _ in range(trials):
        ci = median_ci(sorted(draw(rng) for _ in range(n)))
        covered += ci["low"] <= true_median <= ci["high"]
    achieved = median_ci_ranks(n)[1]
    assert achieved >= 0.95
    standard_error = (achieved * (1 - achieved) / trials) ** 0.5
    assert covered / trials >= achieved - 4 * standard_error, (name, n, covered / trials, achieved)
    assert covered / trials <= min(1.0, achieved + 4 * standard_error + 1e-9)  # and not wildly conservative


def test_the_ranks_are_the_exact_binomial_ones():
    assert median_ci_ranks(5) is None  # [min, max] of 5 covers only 93.75%
    k, achieved = median_ci_ranks(6)
    assert k == 1 and achieved == pytest.approx(1 - 2 / 64)
    k, achieved = median_ci_ranks(100)
    assert k == 40 and achieved == pytest.approx(0.9648, abs=1e-4)  # the textbook ranks 40 and 61
    assert median_ci_ranks(5000)[0] == pytest.approx(2500 - 1.96 * 0.5 * 5000 ** 0.5, abs=2)


def test_every_summary_carries_the_interval_and_none_below_six_samples():
    stats = summarize([1.0, 1.1, 0.9, 1.05, 0.95, 1.02, 0.98, 1.01])
    assert stats["median_ci_low_ms"] <= stats["median_ms"] <= stats["median_ci_high_ms"]
    assert stats["ci_method"] == "order-statistics" and stats["ci_confidence"] >= 0.95
    assert stats["ci_half_width_ratio"] == pytest.approx(
        (stats["median_ci_high_ms"] - stats["median_ci_low_ms"]) / 2 / stats["median_ms"])
    few = summarize([1.0, 2.0, 3.0])
    assert few["median_ci_low_ms"] is None and few["ci_half_width_ratio"] is None and few["median_ms"] == 2.0


# ---------------------------------------------------------------- the stopping rule's logic, with a fake VM


class FakeVM:
    """time_evaluator's interface, samples drawn from ``draw`` (seconds); counts the batches asked for."""

    def __init__(self, draw):
        self.draw, self.batches = draw, []

    def time_evaluator(self, name, device, number, repeat, min_repeat_ms):
        self.batches.append(repeat)
        return lambda *inputs: type("R", (), {"results": [self.draw() for _ in range(repeat)]})()


def rule_args(**kw):
    defaults = dict(repeats=10, min_repeat_ms=0, ci_target=0.02, time_cap=5.0, max_repeats=10000, confidence=0.95)
    return type("Args", (), {**defaults, **kw})()


def test_the_stopping_rule_stops_once_the_interval_is_narrow_enough():
    rng = random.Random(3)
    vm = FakeVM(lambda: rng.gauss(1e-3, 3e-5))  # 3% spread: the interval narrows past 2% quickly
    samples, stop = runner.timed_samples(vm, None, [], rule_args())
    assert stop["reason"] == "ci_reached" and stop["ci_half_width_ratio"] <= 0.02
    assert half_width_ratio(sorted(samples)) == stop["ci_half_width_ratio"]
    assert 10 <= len(samples) < 100 and vm.batches[0] == 10


def test_the_stopping_rule_keeps_fixed_repeats_when_off_and_honours_its_sample_cap():
    rng = random.Random(4)
    samples, stop = runner.timed_samples(FakeVM(lambda: rng.uniform(1e-3, 3e-3)), None, [], rule_args(ci_target=0))
    assert len(samples) == 10 and stop == {"rule": "fixed", "reason": "repeats"}
    samples, stop = runner.timed_samples(FakeVM(lambda: rng.uniform(1e-3, 3e-3)), None, [],
                                         rule_args(ci_target=0.001, max_repeats=40))
    assert stop["reason"] == "max_repeats" and len(samples) == 40
    assert "interval is wide" in stopping_warnings(stop)[0]


def test_warm_up_continues_until_two_windows_agree():
    # cold runs: 1 ms plus a part that decays (caches filling, clocks ramping), 8 ms at first.  A simulated
    # clock that each run advances keeps the rule's test independent of how busy the machine is.
    now = [0.0]
    times = iter([1e-3 + 8e-3 * 0.6 ** i for i in range(1000)])

    def clock():
        return now[0]

    def run():
        now[0] += next(times)

    runs, settled = runner.warm_up(run, 4, 0.15, 5.0, clock=clock)
    assert settled is True and runs == 13  # windows of 3: medians 3.9, 1.6, 1.13, 1.03 ms
    assert runner.warm_up(run, 4, 0.0, 2.0, clock=clock) == (4, None)  # settling off: exactly the minimum

    alternating = itertools.cycle([1e-3, 3e-3])  # windows of 3 have medians 1, 3, 1, ... ms: never agree

    def never_settles():
        now[0] += next(alternating)

    runs, settled = runner.warm_up(never_settles, 4, 0.01, 0.05, clock=clock)
    assert settled is False and runs < 60  # the cap ends it


# ---------------------------------------------------------------- board state


def clocks(governor="performance", khz=1_500_000, temp=50.0, throttled=None):
    return {"governors": {"cpu0": governor, "cpu1": governor}, "freqs_khz": {"cpu0": khz, "cpu1": khz},
            "temps_c": {"thermal_zone0": temp}, "pi_throttled": throttled, "unavailable": []}


def test_board_warnings_name_a_slow_governor_a_clock_drop_heat_and_pi_throttling():
    assert board_warnings(clocks(), clocks()) == []
    assert "ondemand, not performance" in board_warnings(clocks("ondemand"), clocks("ondemand"))[0]
    assert "1500 MHz to 1000 MHz" in board_warnings(clocks(), clocks(khz=1_000_000))[0]
    assert "85.0 C" in board_warnings(clocks(), clocks(temp=85.0))[0]
    assert "throttled" in board_warnings(clocks(), clocks(throttled="0x4"))[0]
    unavailable = {"governors": None, "freqs_khz": None, "temps_c": None, "pi_throttled": None,
                   "unavailable": ["governors", "freqs_khz", "temps_c"]}
    assert board_warnings(unavailable, unavailable) == []


# ---------------------------------------------------------------- comparisons, synthetic


def rounds_of(rng, median, n_rounds=6, drift=0.03):
    out = []
    for _ in range(n_rounds):
        level = median * (1 + rng.uniform(-drift, drift))  # the device's speed drifts from round to round
        out.append([rng.gauss(level, level * 0.02) for _ in range(30)])
    return out


def test_compare_rounds_tells_a_real_difference_from_drift():
    rng = random.Random(7)
    same = compare_rounds(rounds_of(rng, 1.0), rounds_of(rng, 1.0))
    assert same["beyond_noise"] is False and "no difference beyond the noise" in same["verdict"]
    slower = compare_rounds(rounds_of(rng, 1.0), rounds_of(rng, 1.3), names=("old", "new"))
    assert slower["beyond_noise"] is True and slower["verdict"].startswith("new is slower than old")
    assert slower["ratio_ci_low"] > 1.0 and slower["a"]["median_ci_low_ms"] is not None
    few = compare_rounds(rounds_of(rng, 1.0, 3), rounds_of(rng, 2.0, 3))
    assert few["beyond_noise"] is None and "undetermined" in few["verdict"]


# ---------------------------------------------------------------- real artifacts, real runners, real devices


def test_a_quiet_device_stops_early_with_a_narrow_interval(host_artifact):
    report = run_artifact(host_artifact, warmup=5, repeats=10, ci_target_ratio=0.05, time_cap_s=20.0)
    stop = report.stopping
    assert stop["rule"] == "ci" and stop["reason"] == "ci_reached", stop
    assert stop["elapsed_s"] < 5.0 and len(report.samples_ms) >= 10
    assert report.stats["ci_half_width_ratio"] <= 0.05
    assert report.stats["median_ci_low_ms"] <= report.median_ms <= report.stats["median_ci_high_ms"]
    assert report.warmup_runs >= 5 and report.warmup_settled in (True, False)
    assert not [w for w in report.warnings if "interval" in w]


def test_a_noisy_device_runs_to_its_cap_and_says_the_interval_is_wide(host_artifact):
    noise = json.dumps({"probability": 0.7, "max_ms": 2.0, "seed": 1})
    report = run_artifact(host_artifact, warmup=2, repeats=10, ci_target_ratio=0.02, time_cap_s=1.0,
                          runner_path=NOISY_RUNNER, env={"EDGEKIT_NOISE": noise})
    assert report.stopping["reason"] == "time_cap" and report.stopping["elapsed_s"] >= 1.0
    assert report.stopping["ci_half_width_ratio"] > 0.02
    assert any("interval is wide" in w and "time cap of 1 s" in w for w in report.warnings)


def test_clocks_absent_are_reported_unavailable_and_pinning_pins(host_artifact, tmp_path):
    report = run_artifact(host_artifact, warmup=2, repeats=6, cpus=(0,), env={"EDGEKIT_SYSFS_ROOT": str(tmp_path)})
    for when in ("before", "after"):
        assert report.clocks[when]["unavailable"] == ["governors", "freqs_khz", "temps_c"]
        assert report.clocks[when]["governors"] is None
    assert report.device["pinned_cpus"] == [0] and report.warnings == []
    memory = report.memory
    assert memory["peak_rss_bytes"] >= memory["runtime_rss_bytes"] > 10 * 2**20  # the runtime is tens of MiB
    with pytest.raises(RemoteCommandError, match="cannot pin to CPUs 4096"):
        run_artifact(host_artifact, warmup=1, repeats=6, cpus=(4096,))


def fake_board_sysfs(root: Path, governor: str, khz: int, millideg: int) -> Path:
    for cpu in ("cpu0", "cpu1"):
        freq = root / "sys/devices/system/cpu" / cpu / "cpufreq"
        freq.mkdir(parents=True)
        (freq / "scaling_governor").write_text(governor + "\n")
        (freq / "scaling_cur_freq").write_text(f"{khz}\n")
    (root / "sys/devices/system/cpu/cpufreq").mkdir()  # not a cpuN entry: ignored
    zone = root / "sys/class/thermal/thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text(f"{millideg}\n")
    return root


def test_a_board_over_ssh_reports_interval_clocks_memory_and_warns_of_its_governor(make_device, host_artifact,
                                                                                   tmp_path, capsys):
    import shutil
    import tempfile

    # the device logs in as an unprivileged user, who cannot enter pytest's 0700 tmp_path
    board = Path(tempfile.mkdtemp(prefix="edgekit-fake-sysfs-"))
    board.chmod(0o755)
    sysfs = fake_board_sysfs(board, "powersave", 1_500_000, 84_500)
    device = make_device(env={"EDGEKIT_SYSFS_ROOT": str(sysfs)})
    try:
        _check_board_over_ssh(device, host_artifact, capsys)
    finally:
        shutil.rmtree(board, ignore_errors=True)


def _check_board_over_ssh(device, host_artifact, capsys):
    argv = ["deploy", "--artifact", str(host_artifact.path), *ssh_args(device), "--warmup", "3", "--repeats", "10",
            "--ci-target", "0.05", "--time-cap", "3", "--cpus", "0"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "  interval   median in [" in out and "warm-up runs" in out
    assert "  clocks     governor powersave, 1500->1500 MHz, 84.5->84.5 C" in out
    assert "WARNING    CPU governor is powersave" in out and "WARNING    the board reached 84.5 C" in out
    assert "  memory     peak resident" in out

    assert main(argv + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)["devices"][0]["report"]
    assert report["clocks"]["before"]["governors"] == {"cpu0": "powersave", "cpu1": "powersave"}
    assert report["clocks"]["after"]["temps_c"] == {"thermal_zone0": 84.5}
    assert report["stopping"]["rule"] == "ci" and report["stopping"]["ci_target_ratio"] == 0.05
    assert report["stats"]["median_ci_low_ms"] <= report["stats"]["median_ms"] <= report["stats"]["median_ci_high_ms"]
    assert report["device"]["pinned_cpus"] == [0] and report["memory"]["peak_rss_bytes"] > 0
    assert len(report["warnings"]) == 2 and report["samples_ms"] and report["kernels"] == []  # old keys kept


def test_bad_stopping_flags_are_usage_errors_and_a_bad_profile_field_names_itself(tmp_path, capsys):
    for flags in (["--ci-target", "2"], ["--ci-target", "x"], ["--time-cap", "0"], ["--cpus", "a,b"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["run", "--artifact", str(tmp_path), *flags])
        assert exit_info.value.code == 2
    assert "--ci-target is a fraction" in capsys.readouterr().err
    (tmp_path / "noisy.toml").write_text('description = "x"\nkind = "cpu"\narch = "native"\ntriple = "native"\n'
                                         'tvm_target = { kind = "llvm" }\n[measure]\nci_target_ratio = 3\n')
    assert main(["targets", "show", "noisy", "--targets-dir", str(tmp_path)]) == 6
    assert "measure.ci_target_ratio" in capsys.readouterr().err


@pytest.fixture(scope="module")
def heavy_artifact(two_conv_artifact):
    """A model with deliberately expensive convolutions: hundreds of times the tiny CNN's work."""
    return two_conv_artifact


def test_comparing_two_artifacts_in_interleaved_rounds_finds_the_heavier_one(host_artifact, heavy_artifact, capsys):
    result = compare_artifacts(host_artifact, heavy_artifact, rounds=6, warmup=2, repeats=8, names=("tiny", "heavy"))
    assert result["beyond_noise"] is True and result["verdict"].startswith("heavy is slower than tiny")
    assert result["ratio_ci_low"] > 1.0 and len(result["round_ratios"]) == 6
    assert len(result["reports"]["a"]) == len(result["reports"]["b"]) == 6
    assert result["a"]["median_ci_low_ms"] is not None and result["b"]["count"] == 48
    assert main(["compare", str(heavy_artifact.path), str(heavy_artifact.path), "--rounds", "1", "--repeats", "6",
                 "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["rounds"] == 1 and again["beyond_noise"] is None  # one round cannot give a 95% interval
