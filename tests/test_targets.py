"""Target profiles: every shipped profile loads, broken files name their path and field."""

import subprocess
import sys
import time

import pytest

from edgekit.errors import TargetProfileError, UnknownTargetError
from edgekit.targets import list_targets, load_target

EXPECTED = {"host", "x86-avx2", "rpi4", "rpi5", "rpi3-armv7", "jetson-nano", "jetson-orin-nano", "mali-g"}

VALID = """
description = "my board"
kind = "cpu"
arch = "aarch64"
triple = "aarch64-linux-gnu"
cross_compiler = "aarch64-linux-gnu-g++"
tvm_target = { kind = "llvm", mtriple = "aarch64-linux-gnu", mcpu = "cortex-a55" }
"""


def test_every_expected_profile_ships_and_loads():
    assert EXPECTED <= set(list_targets())
    for name in list_targets():
        profile = load_target(name)
        assert profile.name == name and profile.description
        assert profile.kind in ("cpu", "cuda", "opencl")


def test_arm_profiles_name_their_cpu_and_cross_compiler():
    assert load_target("rpi4").tvm_target["mcpu"] == "cortex-a72"
    assert load_target("rpi5").tvm_target["mcpu"] == "cortex-a76"
    armv7 = load_target("rpi3-armv7")
    assert armv7.elf_machine == "arm" and armv7.cross_compiler == "arm-linux-gnueabihf-g++"
    assert load_target("jetson-orin-nano").cuda_arch == "sm_87"
    assert load_target("jetson-nano").cuda_arch == "sm_53"


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(UnknownTargetError) as info:
        load_target("rpi-4")
    assert "rpi-4" in str(info.value) and "rpi4" in str(info.value) and "jetson-nano" in str(info.value)


def test_user_directory_adds_and_overrides_profiles(tmp_path, monkeypatch):
    (tmp_path / "myboard.toml").write_text(VALID)
    (tmp_path / "rpi4.toml").write_text(VALID.replace("my board", "overridden pi"))
    assert load_target("myboard", [tmp_path]).tvm_target["mcpu"] == "cortex-a55"
    assert load_target("rpi4", [tmp_path]).description == "overridden pi"
    monkeypatch.setenv("EDGEKIT_TARGETS_DIR", str(tmp_path))
    assert "myboard" in list_targets()


@pytest.mark.parametrize("text, field, words", [
    (VALID.replace('kind = "cpu"', 'kind = "tpu"'), "kind", "cpu, cuda, opencl"),
    (VALID.replace('arch = "aarch64"', 'arch = "mips"'), "arch", "aarch64"),
    (VALID.replace('description = "my board"\n', ""), "description", "missing"),
    (VALID + "\n[measure]\nrepeats = 0\n", "measure.repeats", ">= 1"),
    (VALID + "\n[measure]\nthreads = \"four\"\n", "measure.threads", "integer"),
    (VALID + "\ncolour = 1\n", "colour", "unknown field"),
    (VALID.replace('kind = "cpu"', 'kind = "cuda"'), "cuda_arch", "missing"),
    (VALID.replace('mcpu = "cortex-a55"', 'mcpu = "x"').replace('kind = "llvm", ', ''), "tvm_target", "kind"),
])
def test_broken_profile_names_file_and_field(tmp_path, text, field, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(TargetProfileError) as info:
        load_target(str(path))
    message = str(info.value)
    assert str(path) in message and f"field '{field}'" in message and words in message


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("kind = \"cpu\n")
    with pytest.raises(TargetProfileError) as info:
        load_target("broken", [tmp_path])
    assert str(path) in str(info.value) and "not valid TOML" in str(info.value)


def test_targets_list_is_fast_because_it_imports_neither_torch_nor_tvm():
    code = ("import sys; from edgekit.cli.main import main; main(['targets', 'list']); "
            "assert 'torch' not in sys.modules and 'tvm' not in sys.modules, 'heavy import'")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "rpi4" in done.stdout
    assert time.perf_counter() - started < 5  # generous: it is ~0.2 s; torch alone takes 3 s
