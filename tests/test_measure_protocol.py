"""One measurement protocol, from the profile through the artifact to the runner, here and over SSH; one
reading of the runner's output, so a runner failure is the same error on this machine and on a board."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekit.artifacts import CompiledArtifact, LatencyReport
from edgekit.cli.main import main
from edgekit.errors import (
    ArchitectureMismatchError,
    DeviceRuntimeError,
    OutputMismatchError,
    RemoteCommandError,
    RunnerCrashError,
    RunnerTimeoutError,
    UploadCorruptError,
)
from edgekit.measure.protocol import measure_latency
from edgekit.targets import MeasureProtocol
from edgekit.testing.faults import build_faulty_artifact

SEVEN_ON_TWO = """
description = "this machine, measured the user's way"
kind = "cpu"
arch = "native"
triple = "native"
tvm_target = { kind = "llvm", mcpu = "native" }

[measure]
warmup = 2
repeats = 7
threads = 2
"""


@pytest.fixture(scope="module")
def user_profile(tmp_path_factory) -> Path:
    """A --targets-dir holding a user profile that asks for 7 repeats on 2 threads."""
    directory = tmp_path_factory.mktemp("user-targets")
    (directory / "my-host.toml").write_text(SEVEN_ON_TWO)
    return directory


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    import torch

    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 10)).eval()
    path = tmp_path_factory.mktemp("model") / "tiny.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(1, 1, 8, 8),)), path)
    return path


@pytest.fixture(scope="module")
def user_artifact(user_profile, model_file, tmp_path_factory) -> CompiledArtifact:
    out = tmp_path_factory.mktemp("user-artifacts")
    code = main(["compile", "--model", str(model_file), "--target", "my-host", "--targets-dir", str(user_profile),
                 "-o", str(out), "--json"])
    assert code == 0
    (path,) = [p for p in out.iterdir() if (p / "manifest.json").is_file()]
    return CompiledArtifact.open(path)


def ssh_args(device) -> list[str]:
    return ["--host", device.host_spec, "-i", str(device.client_key), "--known-hosts", str(device.known_hosts),
            "--no-agent"]


# The CLI's default stopping rule off: exactly the profile's 7 samples (the rule's own tests are below)
EXACT = ["--ci-target", "0"]


def assert_seven_on_two(report: dict) -> None:
    assert len(report["samples_ms"]) == 7 and report["stats"]["count"] == 7
    assert report["threads"] == 2 and report["warmup"] == 2
    assert report["device"]["runtime_threads"] == 2  # the runtime's pool really had two threads


def test_the_profile_protocol_is_written_into_the_manifest(user_artifact):
    assert user_artifact.manifest["measure"] == {"warmup": 2, "repeats": 7, "threads": 2, "min_repeat_ms": 0.0}
    assert user_artifact.measure_protocol == MeasureProtocol(warmup=2, repeats=7, threads=2)


def test_a_user_profile_gives_7_samples_on_2_threads_locally(user_profile, model_file, tmp_path, capsys):
    code = main(["run", "--model", str(model_file), "--target", "my-host", "--targets-dir", str(user_profile),
                 "-o", str(tmp_path), *EXACT, "--json"])
    assert code == 0
    assert_seven_on_two(json.loads(capsys.readouterr().out))


def test_the_artifact_keeps_its_protocol_without_the_profile(user_artifact, capsys):
    # no --targets-dir: "my-host" is unknown here, and the manifest still says how to measure
    assert main(["run", "--artifact", str(user_artifact.path), *EXACT, "--json"]) == 0
    assert_seven_on_two(json.loads(capsys.readouterr().out))


def test_flags_override_the_protocol_and_keep_the_rest(user_artifact, capsys):
    assert main(["run", "--artifact", str(user_artifact.path), "--repeats", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["samples_ms"]) == 3 and report["threads"] == 2 and report["warmup"] == 2
    protocol = user_artifact.measure_protocol.with_overrides(repeats=3, threads=None)
    assert protocol == MeasureProtocol(warmup=2, repeats=3, threads=2)


def test_a_user_profile_gives_7_samples_on_2_threads_over_ssh(device, user_artifact, capsys):
    assert main(["deploy", "--artifact", str(user_artifact.path), *ssh_args(device), *EXACT, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["devices"][0]
    assert result["ok"], result["error"]
    assert_seven_on_two(result["report"])


def test_the_cli_measures_until_the_interval_is_within_2_percent_by_default(user_artifact, capsys):
    assert main(["run", "--artifact", str(user_artifact.path), "--time-cap", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    stop = report["stopping"]
    assert stop["rule"] == "ci" and stop["ci_target_ratio"] == 0.02 and stop["time_cap_s"] == 3
    assert stop["reason"] in ("ci_reached", "time_cap") and len(report["samples_ms"]) >= 7  # repeats: the minimum
    if stop["reason"] == "ci_reached":
        assert report["stats"]["ci_half_width_ratio"] <= 0.02


def test_repeats_without_ci_target_on_the_cli_is_exactly_that_many(user_artifact, capsys):
    assert main(["run", "--artifact", str(user_artifact.path), "--repeats", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["samples_ms"]) == 4 and report["stopping"]["rule"] == "fixed"


def test_the_cli_stopping_rule_yields_to_the_user_and_the_profile():
    from edgekit.measure.protocol import CLI_CI_TARGET_RATIO, cli_stopping_rule

    plain = MeasureProtocol()
    assert cli_stopping_rule({}, plain) == {"ci_target_ratio": CLI_CI_TARGET_RATIO} and CLI_CI_TARGET_RATIO == 0.02
    assert cli_stopping_rule({"threads": 2}, plain) == {"threads": 2, "ci_target_ratio": 0.02}
    assert cli_stopping_rule({"repeats": 9}, plain) == {"repeats": 9}  # a count the user fixed is kept exact
    assert cli_stopping_rule({"ci_target_ratio": 0.0}, plain) == {"ci_target_ratio": 0.0}  # --ci-target 0: off
    assert cli_stopping_rule({}, MeasureProtocol(ci_target_ratio=0.05)) == {}  # the profile's own rule stands


def test_measure_latency_here_returns_per_kernel_times(user_artifact):
    report = measure_latency(user_artifact, kernels=True, repeats=3)
    assert len(report.samples_ms) == 3 and report.threads == 2
    names = {k["name"] for k in report.kernels}
    assert "fused_conv2d_add_relu_prepacked" in names  # its weights packed at compile time
    assert all(k["median_ms"] > 0 and k["samples_ms"] for k in report.kernels)
    assert report.emulated is False and report.device["machine"]


def test_min_repeat_ms_makes_every_sample_last_that_long(user_artifact):
    """A sample is the mean of as many back-to-back runs as fill min_repeat_ms (time_evaluator's rule)."""
    import subprocess
    import sys

    from edgekit.onboard import RUNNER_PATH, runner_options

    def timed_s(protocol):
        done = subprocess.run([sys.executable, str(RUNNER_PATH), str(user_artifact.path), *runner_options(protocol)],
                              capture_output=True, text=True, timeout=120)
        data = json.loads(done.stdout.splitlines()[-1])
        assert len(data["samples_ms"]) == 5 and data["min_repeat_ms"] == protocol.min_repeat_ms
        return data["timed_s"]

    assert timed_s(MeasureProtocol(repeats=5, warmup=1, min_repeat_ms=400)) >= 5 * 0.4
    assert timed_s(MeasureProtocol(repeats=5, warmup=1)) < 1.0  # one run of this model takes well under 1 ms


@pytest.mark.parametrize("kind, error, exit_code, limit_s", [("segfault", RunnerCrashError, 27, 120),
                                                             ("hang", RunnerTimeoutError, 28, 4)])
def test_a_runner_failure_is_the_same_error_here_and_on_a_board(kind, error, exit_code, limit_s, device,
                                                                 host_artifact, tmp_path):
    faulty = build_faulty_artifact(host_artifact, tmp_path, kind)
    with pytest.raises(error) as here:
        measure_latency(faulty, repeats=3, warmup=1, time_limit_s=limit_s)
    with pytest.raises(error) as there:
        measure_latency(faulty, device.host_spec, repeats=3, warmup=1, time_limit_s=limit_s,
                        connect=device.connect_kwargs())
    assert here.value.exit_code == there.value.exit_code == exit_code
    assert here.value.host == "local" and there.value.host not in (None, "local")


def test_a_runner_failure_is_the_same_exit_code_through_the_cli(device, host_artifact, tmp_path, capsys):
    crash = build_faulty_artifact(host_artifact, tmp_path, "segfault")
    local = main(["run", "--artifact", str(crash.path), "--repeats", "2"])
    remote = main(["deploy", "--artifact", str(crash.path), *ssh_args(device), "--repeats", "2"])
    assert local == remote == RunnerCrashError.exit_code


RUNNER_OK = {"ok": True, "artifact_id": "a1", "target": "host", "threads": 1, "warmup": 1, "samples_ms": [1.0, 2.0],
             "output_check": {"passed": True, "max_abs_error": 0.0, "atol": 1e-4, "rtol": 1e-4},
             "device": {"machine": "x86_64", "emulated": False}}


@pytest.mark.parametrize("status, printed, stderr, error", [
    (20, {"ok": False, "message": "sha256 of model.so is ..."}, "", UploadCorruptError),
    (21, {"ok": False, "message": "cannot import the TVM runtime"}, "", DeviceRuntimeError),
    (22, {"ok": False, "message": "No such file", "library_elf_machine": "aarch64", "device_machine": "x86_64"}, "",
     ArchitectureMismatchError),
    (22, {"ok": False, "message": "bad library", "library_elf_machine": "x86-64", "device_machine": "x86_64"}, "",
     DeviceRuntimeError),
    (23, {"ok": False, "error": "time_limit"}, "", RunnerTimeoutError),
    (124, None, "", RunnerTimeoutError),
    (1, None, "Timeout (0:00:05)!", RunnerTimeoutError),
    (139, None, "Fatal Python error: Segmentation fault", RunnerCrashError),
    (-1, None, "", RunnerCrashError),
    (1, None, "Traceback ...", RemoteCommandError),
    (0, {**RUNNER_OK, "output_check": {"passed": False, "max_abs_error": 1.0, "atol": 1e-4, "rtol": 1e-4}}, "",
     OutputMismatchError),
])
def test_every_runner_exit_maps_to_one_error_wherever_it_ran(status, printed, stderr, error):
    stdout = json.dumps(printed) + "\n" if printed else ""
    for where in ("local", "pi@board"):
        with pytest.raises(error):
            LatencyReport.from_runner(exit_status=status, stdout=stdout, stderr=stderr, protocol=MeasureProtocol(),
                                      where=where)


def test_runner_output_becomes_a_report_with_the_runners_facts():
    emulated = {**RUNNER_OK, "emulated": True, "device": {"machine": "aarch64", "emulated": True}}
    report = LatencyReport.from_runner(exit_status=0, stdout="chatter\n" + json.dumps(emulated), stderr="",
                                       protocol=MeasureProtocol(), where="local", device_extra={"host": "h"})
    assert report.emulated is True and report.stats["emulated"] is True  # from the runner, never hard-coded
    assert report.samples_ms == [1.0, 2.0] and report.stats["median_ms"] == 1.5 and report.device["host"] == "h"
