"""A built wheel works on its own: installed into a fresh virtual environment (torch and TVM from the system's
site packages), run from outside the checkout, it has every target profile and compiles and runs a model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# What a wheel is built from; the copy keeps build/ and *.egg-info out of the checkout.
SOURCES = ("pyproject.toml", "README.md", "edgekit", "targets")


def run(argv, *, cwd, env=None, timeout=900) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (f"{' '.join(map(str, argv))} failed with exit {done.returncode}:\n"
                                  f"{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done


def clean_env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EDGEKIT_TARGETS_DIR")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """The wheel built from this checkout, installed into a new venv; a failure to build fails, never skips."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, source / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            shutil.copy2(src, source / name)
    dist = root / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", str(source),
         "-w", dist], cwd=root, env=clean_env())
    (wheel,) = dist.glob("edgekit-*.whl")
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", venv], cwd=root, env=clean_env())
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel], cwd=root, env=clean_env())
    outside = root / "elsewhere"
    outside.mkdir()
    return {"python": python, "edgekit": venv / "bin" / "edgekit", "cwd": outside, "venv": venv}


def test_the_installed_package_is_the_wheel_not_the_checkout(installed):
    where = run([installed["python"], "-c", "import edgekit; print(edgekit.__file__)"], cwd=installed["cwd"],
                env=clean_env()).stdout.strip()
    assert Path(where).is_relative_to(installed["venv"]), where


def test_the_wheel_lists_all_nine_target_profiles(installed):
    done = run([installed["edgekit"], "targets", "list", "--json"], cwd=installed["cwd"], env=clean_env())
    names = {t["name"] for t in json.loads(done.stdout)}
    assert names == {"cuda-sm90", "host", "jetson-nano", "jetson-orin-nano", "mali-g", "rpi3-armv7", "rpi4", "rpi5",
                     "x86-avx2"}
    assert names == {p.stem for p in (REPO / "targets").glob("*.toml")}


@pytest.mark.slow
def test_the_wheel_compiles_and_runs_a_zoo_model_with_matching_outputs(installed, tmp_path):
    argv = ["run", "--model", "zoo:fmnist-resnet", "--repeats", "5", "--json"]
    wheel = json.loads(run([installed["edgekit"], *argv, "-o", tmp_path / "wheel"], cwd=installed["cwd"],
                           env=clean_env()).stdout)
    assert wheel["output_check"]["passed"] is True
    assert len(wheel["samples_ms"]) == 5 and wheel["target"] == "host"
    checkout = json.loads(run([sys.executable, "-m", "edgekit.cli.main", *argv, "-o", tmp_path / "checkout"],
                              cwd=installed["cwd"], env=clean_env(PYTHONPATH=str(REPO))).stdout)
    # the same model, recipe and target give the same artifact, whichever install compiled it
    assert wheel["artifact_id"] == checkout["artifact_id"]
    assert wheel["output_check"] == checkout["output_check"]
