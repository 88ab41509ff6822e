"""Real TVM builds for the host: three architectures, from .pt2 and from .onnx, checked against torch."""

import json

import numpy as np
import pytest
import torch

from edgekit.artifacts import CompiledArtifact
from edgekit.compile import compile_model
from edgekit.run import run_artifact
from edgekit.testing.models import ARCHITECTURES, build


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("artifacts")


def _save(model, shape, directory, name, fmt):
    example = torch.randn(*shape)
    path = directory / f"{name}.{fmt}"
    if fmt == "pt2":
        torch.export.save(torch.export.export(model, (example,)), path)
    else:
        torch.onnx.export(model, (example,), path, dynamo=False, opset_version=17)
    return path


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_architecture_compiles_runs_and_matches_torch(name, fmt, out_dir, tmp_path):
    model, shape = build(name)
    artifact = compile_model(_save(model, shape, tmp_path, name, fmt), "host", out_dir=out_dir)

    report = run_artifact(artifact, warmup=2, repeats=5)
    assert report.output_check["passed"] and report.output_check["max_abs_error"] < 1e-4
    assert len(report.samples_ms) == 5 and report.stats["median_ms"] > 0

    # The reference in the artifact is torch's own output, not TVM's.
    reference = np.load(artifact.path / "reference.npz")
    with torch.no_grad():
        expected = model(torch.from_numpy(reference["in0"])).numpy()
    np.testing.assert_allclose(reference["out0"], expected, atol=1e-5)


def test_manifest_describes_the_artifact(out_dir):
    model, shape = build("resnet")
    artifact = compile_model(model, "host", input_shapes=[shape], out_dir=out_dir)
    m = artifact.manifest
    assert m["schema_version"] == 1 and m["tvm_version"].startswith("0.27")
    assert m["elf_machine"] == "x86-64" and m["target"]["name"] == "host"
    assert m["inputs"][0]["shape"] == list(shape) and m["outputs"][0]["shape"] == [1, 10]
    assert set(m["files"]) == {"model.so", "reference.npz"}
    assert m["target"]["tvm_target"]["kind"] == "llvm"
    CompiledArtifact.open(artifact.path)  # verifies every sha256


def test_same_model_and_target_give_the_same_artifact_without_rebuilding(out_dir):
    model, shape = build("mobilenetv2")
    first = compile_model(model, "host", input_shapes=[shape], out_dir=out_dir)
    built_at = (first.path / "model.so").stat().st_mtime_ns
    second = compile_model(build("mobilenetv2")[0], "host", input_shapes=[shape], out_dir=out_dir)
    assert second.artifact_id == first.artifact_id
    assert (second.path / "model.so").stat().st_mtime_ns == built_at

    changed, _ = build("mobilenetv2", seed=1)
    assert compile_model(changed, "host", input_shapes=[shape], out_dir=out_dir).artifact_id != first.artifact_id


def test_tampered_artifact_is_refused(out_dir, tmp_path):
    model, shape = build("transformer")
    artifact = compile_model(model, "host", input_shapes=[shape], out_dir=tmp_path)
    with open(artifact.library_path, "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02\x03")
    from edgekit.errors import ArtifactError

    with pytest.raises(ArtifactError, match="sha256 of model.so"):
        run_artifact(artifact.path)


def test_artifact_manifest_is_plain_json(out_dir):
    model, shape = build("resnet")
    artifact = compile_model(model, "host", input_shapes=[shape], out_dir=out_dir)
    assert json.loads((artifact.path / "manifest.json").read_text())["artifact_id"] == artifact.artifact_id


def test_a_bug_in_edgekits_own_passes_is_not_hidden_by_the_onnx_fallback(monkeypatch, tmp_path):
    """A Python error raised inside edgekit's pipeline is edgekit's bug: it surfaces as itself (the CLI's
    internal error), instead of a silent second build through ONNX with other, slower kernels."""
    from edgekit.compile.schedules import apply, target_info

    monkeypatch.setattr(apply, "schedule_rules", lambda target: target_info.cpu_info(None))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)).eval()
    with pytest.raises(AttributeError):
        compile_model(model, "host", input_shapes=[(1, 3, 8, 8)], out_dir=tmp_path, tuning=False)
