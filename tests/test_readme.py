"""README's two set-up commands stay true: CI runs the second, and the main job in the first works here."""

import re
import shlex
from pathlib import Path

from edgekit.cli.main import main

ROOT = Path(__file__).resolve().parent.parent


def setup_commands() -> list[str]:
    lines = (ROOT / "README.md").read_text().splitlines()
    commands = [line.strip() for line in lines[2:6] if line.startswith("    ")]
    assert len(commands) == 2, f"README.md must open with two indented commands, found {commands}"
    return commands


def test_ci_runs_the_readme_test_command():
    test_command = setup_commands()[1].split("&&")[-1].strip()
    ci_script = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci_script.splitlines(), f"{test_command!r} is not a line of .ci/run"


def test_both_commands_install_the_system_packages_and_the_package_first():
    for command in setup_commands():
        steps = [s.strip() for s in command.split("&&")]
        assert steps[0] == "tools/setup-system.sh" and steps[1].startswith("pip install -e")


def test_main_job_compiles_runs_and_checks_the_bundled_model(capsys, tmp_path, monkeypatch):
    main_job = setup_commands()[0].split("&&")[-1].strip()
    argv = shlex.split(main_job)
    assert argv[0] == "edgekit"
    monkeypatch.chdir(tmp_path)  # its artifacts go to ./edgekit-artifacts
    assert main(argv[1:] + ["--repeats", "5"]) == 0
    out = capsys.readouterr().out
    assert "outputs    match the reference" in out
    assert re.search(r"median \d+\.\d+ ms", out)
    assert (tmp_path / "edgekit-artifacts").is_dir()
    # then edgekit against ONNX Runtime on this machine: both medians with intervals, a verdict
    assert "compared   with onnxruntime here, 6 interleaved rounds" in out
    assert re.search(r"^onnxruntime  median \S+ ms in .*outputs agree\)$", out, re.M), out
    assert re.search(r"^ {13}(edgekit is (faster|slower) than onnxruntime|no difference beyond the noise)", out, re.M)
