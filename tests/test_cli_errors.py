"""Bad input through the CLI: each failure family has a clear message and its own exit code."""

import json

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edgekit.cli.main import main
from edgekit.testing.models import build

EXIT = {"usage": 2, "unknown_target": 3, "profile": 6, "toolchain": 7, "model": 8, "shape": 9, "op": 10}


@pytest.fixture(scope="module")
def pt2_file(tmp_path_factory):
    model, shape = build("resnet")
    path = tmp_path_factory.mktemp("models") / "resnet.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(*shape),)), path)
    return path


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_exit_codes_are_distinct():
    assert len(set(EXIT.values())) == len(EXIT)


def test_unknown_target(capsys, pt2_file, tmp_path):
    code, _, err = run_cli(capsys, "compile", "--model", str(pt2_file), "--target", "rpi-4", "-o", str(tmp_path))
    assert code == EXIT["unknown_target"]
    assert "unknown target 'rpi-4'" in err and "rpi4" in err and "host" in err


def test_broken_toml_profile(capsys, pt2_file, tmp_path):
    (tmp_path / "board.toml").write_text('kind = "cpu"\narch = [\n')
    code, _, err = run_cli(capsys, "compile", "--model", str(pt2_file), "--target", "board",
                           "--targets-dir", str(tmp_path), "-o", str(tmp_path))
    assert code == EXIT["profile"]
    assert str(tmp_path / "board.toml") in err and "TOML" in err


def test_profile_with_a_bad_field(capsys, tmp_path):
    (tmp_path / "board.toml").write_text(
        'description = "x"\nkind = "cpu"\narch = "aarch64"\ntriple = "t"\ntvm_target = { kind = "llvm" }\n'
        '[measure]\nrepeats = -3\n')
    code, _, err = run_cli(capsys, "targets", "show", "board", "--targets-dir", str(tmp_path))
    assert code == EXIT["profile"] and "measure.repeats" in err and ">= 1" in err


def test_missing_cross_compiler(capsys, pt2_file, tmp_path):
    (tmp_path / "board.toml").write_text(
        'description = "x"\nkind = "cpu"\narch = "aarch64"\ntriple = "aarch64-linux-gnu"\n'
        'cross_compiler = "aarch64-nowhere-linux-gnu-g++"\n'
        'tvm_target = { kind = "llvm", mtriple = "aarch64-linux-gnu" }\n')
    code, _, err = run_cli(capsys, "compile", "--model", str(pt2_file), "--target", "board",
                           "--targets-dir", str(tmp_path), "-o", str(tmp_path / "out"))
    assert code == EXIT["toolchain"]
    assert "aarch64-nowhere-linux-gnu-g++" in err and "not installed" in err


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_model_file(capsys, pt2_file, tmp_path, damage):
    data = pt2_file.read_bytes()
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a model at all" * 100)
    code, _, err = run_cli(capsys, "compile", "--model", str(bad), "-o", str(tmp_path))
    assert code == EXIT["model"] and str(bad) in err and "corrupt" in err


def test_corrupt_onnx_file(capsys, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    code, _, err = run_cli(capsys, "compile", "--model", str(bad), "-o", str(tmp_path))
    assert code == EXIT["model"] and "not a valid ONNX model" in err


def test_missing_model_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "compile", "--model", str(tmp_path / "nope.pt2"))
    assert code == EXIT["model"] and "not found" in err


def test_wrong_input_shape_for_a_factory(capsys, tmp_path):
    code, _, err = run_cli(capsys, "compile", "--model", "edgekit.testing.models:ResNetTiny",
                           "--input-shape", "1,1,28,28", "-o", str(tmp_path))
    assert code == EXIT["shape"]
    assert "(1, 1, 28, 28)" in err and "input-shape" in err


def test_input_shape_differs_from_the_exported_one(capsys, pt2_file, tmp_path):
    code, _, err = run_cli(capsys, "compile", "--model", str(pt2_file), "--input-shape", "2,3,32,32",
                           "-o", str(tmp_path))
    assert code == EXIT["shape"] and "exported for input shapes" in err


def test_malformed_input_shape_is_a_usage_error(capsys, pt2_file):
    code, _, err = run_cli(capsys, "compile", "--model", str(pt2_file), "--input-shape", "1,three")
    assert code == EXIT["usage"] and "1,3,224,224" in err


class Bessel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x):
        return torch.special.i0(self.fc(x))


def test_unsupported_torch_operator_names_op_and_place(tmp_path):
    from edgekit.compile import compile_model
    from edgekit.errors import UnsupportedOperatorError

    with pytest.raises(UnsupportedOperatorError) as info:
        compile_model(Bessel(), "host", input_shapes=[(1, 4)], out_dir=tmp_path)
    message = str(info.value)
    assert "i0" in message and "torch.export" in message and "forward" in message
    assert info.value.exit_code == EXIT["op"]


def test_unsupported_onnx_operator_names_op_and_node(capsys, tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["h"], name="relu0"),
         helper.make_node("Celu", ["h"], ["y"], name="celu_in_head")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "celu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    code, _, err = run_cli(capsys, "compile", "--model", str(path), "-o", str(tmp_path))
    assert code == EXIT["op"] and "Celu" in err and "celu_in_head" in err and "frontend onnx" in err


def test_compile_and_run_json_for_build_scripts(capsys, pt2_file, tmp_path):
    code, out, _ = run_cli(capsys, "compile", "--model", str(pt2_file), "-o", str(tmp_path), "--json")
    assert code == 0
    artifact = json.loads(out)
    assert artifact["target"]["name"] == "host" and artifact["elf_machine"] == "x86-64"
    code, out, _ = run_cli(capsys, "run", "--artifact", artifact["path"], "--repeats", "5", "--warmup", "1",
                           "--json")
    assert code == 0
    report = json.loads(out)
    assert report["output_check"]["passed"] and len(report["samples_ms"]) == 5
    assert report["stats"]["median_ms"] > 0 and report["emulated"] is False


def test_run_human_output(capsys, pt2_file, tmp_path):
    code, out, _ = run_cli(capsys, "run", "--model", str(pt2_file), "-o", str(tmp_path), "--repeats", "5")
    assert code == 0 and "outputs    match" in out and "median" in out


def test_compile_dry_run_prints_the_resolved_plan_without_building(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "compile", "--model", "model.pt2", "--target", "rpi4", "--dry-run", "--json",
                           "-o", str(tmp_path / "out"))
    assert code == 0
    resolved = json.loads(out)
    assert json.loads(resolved["tvm_target"])["mcpu"] == "cortex-a72"
    assert resolved["cross_compiler"] == "aarch64-linux-gnu-g++" and resolved["cross_compiler_found"]
    assert not (tmp_path / "out").exists()
