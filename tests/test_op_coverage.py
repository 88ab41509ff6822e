"""Every op family of today's edge models compiles from both routes and matches torch (issue 11, part 1).

One small seeded model per family (edgekit.testing.op_families) is saved as a user would, as
``.pt2`` (torch.export.save) and ``.onnx`` (torch.onnx.export, opset 17), and each file is compiled
once for the host in a module-scoped fixture; the tests read those builds.  Outputs must match the
torch model within 1e-4 of the output's scale.  The ``.pt2`` set is cross-built for rpi4 and must
link for AArch64.  Then: each entry of edgekit's frontend registries (edgekit.compile.frontend_fixes)
on its own, the fallback from a failing torch.export route to ONNX and its record in the manifest,
and a failure inside TVM reaching the CLI user as an edgekit error with its stage, no traceback.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

from edgekit.testing.op_families import FAMILIES, build_family, export_family, routes

FAMILY_ROUTES = [(family, route) for family in FAMILIES for route in routes(family)]
RELATIVE_TOLERANCE = 1e-4
FRONTEND = {"pt2": "torch.export", "onnx": "onnx"}


def torch_outputs(family: str) -> list[np.ndarray]:
    model, inputs = build_family(family)
    with torch.no_grad():
        return [t.numpy() for t in torch.utils._pytree.tree_leaves(model(*inputs))]


def _compile_all(paths: dict, target: str, out_dir) -> dict:
    """{(family, route): CompiledArtifact or the exception its build raised}."""
    from edgekit.compile import compile_model

    builds = {}
    for family, route in FAMILY_ROUTES:
        if (family, route) not in paths:
            continue
        _, inputs = build_family(family)
        try:
            builds[family, route] = compile_model(str(paths[family, route]), target, out_dir=out_dir, tuning=False,
                                                  reference_inputs=[x.numpy() for x in inputs])
        except Exception as exc:  # noqa: BLE001  (each test reports its own pair's failure)
            builds[family, route] = exc
    return builds


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("op_families")
    return {(family, route): path for family in FAMILIES
            for route, path in export_family(family, directory).items()}


@pytest.fixture(scope="module")
def host_builds(model_files, tmp_path_factory):
    return _compile_all(model_files, "host", tmp_path_factory.mktemp("host_artifacts"))


@pytest.fixture(scope="module")
def rpi4_builds(model_files, tmp_path_factory):
    pt2_only = {key: path for key, path in model_files.items() if key[1] == "pt2"}
    return _compile_all(pt2_only, "rpi4", tmp_path_factory.mktemp("rpi4_artifacts"))


def artifact(builds, family, route):
    result = builds[family, route]
    if isinstance(result, Exception):
        raise AssertionError(f"{family} ({route}) did not compile: {type(result).__name__}: {result}") from result
    return result


def run_here(compiled) -> list[np.ndarray]:
    from edgekit.compile.tvm_env import import_tvm

    tvm = import_tvm()
    from tvm.runtime.vm import VirtualMachine

    reference = np.load(compiled.path / compiled.manifest["reference"])
    vm = VirtualMachine(tvm.runtime.load_module(str(compiled.library_path)), tvm.cpu())
    result = vm["main"](*[tvm.runtime.tensor(reference[f"in{i}"]) for i in range(len(compiled.manifest["inputs"]))])

    def leaves(value):
        return [value.numpy()] if hasattr(value, "numpy") else [a for item in value for a in leaves(item)]

    return leaves(result)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    scale = max(float(np.abs(expected).max()), 1e-12)
    return float(np.abs(actual.astype(np.float64) - expected).max()) / scale


@pytest.mark.parametrize("family,route", FAMILY_ROUTES)
def test_family_matches_torch_on_host(host_builds, family, route):
    compiled = artifact(host_builds, family, route)
    assert compiled.manifest["model"]["frontend"] == FRONTEND[route]
    assert "fallback" not in compiled.manifest["model"], "each family compiles on the route it was given"
    actual, expected = run_here(compiled), torch_outputs(family)
    assert [a.shape for a in actual] == [e.shape for e in expected]
    errors = [relative_error(a, e) for a, e in zip(actual, expected)]
    assert max(errors) <= RELATIVE_TOLERANCE, f"{family} ({route}): relative errors {errors}"


@pytest.mark.parametrize("family", FAMILIES)
def test_family_cross_builds_for_rpi4(rpi4_builds, family):
    compiled = artifact(rpi4_builds, family, "pt2")
    assert compiled.manifest["elf_machine"] == "aarch64"
    readelf = subprocess.run(["readelf", "-h", str(compiled.library_path)], capture_output=True, text=True,
                             check=True).stdout
    assert "AArch64" in readelf, readelf


@pytest.mark.slow
def test_rpi4_builds_match_torch_on_the_emulated_pi(rpi4_builds, emulated_pi):
    """Every family's rpi4 build, run on the emulated Pi (arm64 userland under qemu), in one device process."""
    from edgekit.testing.device_check import check_on_device

    compiled = [artifact(rpi4_builds, family, "pt2") for family in FAMILIES]
    reports = check_on_device(emulated_pi, compiled)
    for family, report in zip(FAMILIES, reports):
        assert report["machine"] == "aarch64", report
        assert report["outputs"] == len(torch_outputs(family)), (family, report)
        assert max(report["relative_errors"]) <= RELATIVE_TOLERANCE, (family, report)


# ---------------------------------------------------------------------------------------- the registries


def _decomposed_ops(family: str) -> set[str]:
    model, inputs = build_family(family)
    program = torch.export.export(model, inputs).run_decompositions()
    return {node.target.__name__ for node in program.graph.nodes if node.op == "call_function"
            and hasattr(node.target, "__name__")}


def test_every_torch_converter_is_needed_and_exercised_by_a_family():
    """Each TORCH_CONVERTERS entry is an op some family's graph holds (so the host tests run it), and one
    TVM's frontend has no entry for, or one whose entry fails the build (max.dim: topk's extern sort)."""
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    from edgekit.compile.frontend_fixes import TORCH_CONVERTERS

    seen = set().union(*(_decomposed_ops(f) for f in FAMILIES))
    stock = set(ExportedProgramImporter().create_convert_map())
    for op in TORCH_CONVERTERS:
        assert op in seen, f"no op family exercises the converter for {op}"
        assert op not in stock or op == "max.dim", f"TVM's torch frontend converts {op} itself now: drop the entry"


def test_onnx_shape_arithmetic_folds_to_constants(model_files):
    """chunk/split's Shape -> Gather -> Div -> Slice becomes constants, so no dynamic slice reaches TVM;
    the folded model computes what the original does (ONNX Runtime on both)."""
    import onnx
    import onnxruntime

    from edgekit.compile.frontend_fixes import apply_onnx_fixes, fold_shape_arithmetic

    original = onnx.load(model_files["shufflenet-unit", "onnx"])
    assert any(node.op_type == "Shape" for node in original.graph.node)
    fixed = apply_onnx_fixes(original)
    assert not any(node.op_type in ("Shape", "Gather") for node in fixed.graph.node)
    assert fold_shape_arithmetic(fixed) == 0  # a fixed point
    onnx.checker.check_model(fixed)
    _, inputs = build_family("shufflenet-unit")
    feeds = {"input0": inputs[0].numpy()}
    before = onnxruntime.InferenceSession(original.SerializeToString()).run(None, feeds)
    after = onnxruntime.InferenceSession(fixed.SerializeToString()).run(None, feeds)
    np.testing.assert_allclose(after[0], before[0], rtol=0, atol=0)

    from tvm.relax.frontend.onnx import from_onnx

    assert "dynamic_strided_slice" in from_onnx(original).script()
    assert "dynamic_strided_slice" not in from_onnx(fixed).script()


def test_onnx_empty_reduce_axes_are_dropped(model_files):
    """x.amax() exports as ReduceMax(axes=[]), which TVM cannot read; without the attribute it reduces all."""
    import onnx

    from edgekit.compile.frontend_fixes import drop_empty_reduce_axes

    model = onnx.load(model_files["reductions", "onnx"])
    empty = [n for n in model.graph.node if n.op_type.startswith("Reduce")
             and any(a.name == "axes" and not a.ints for a in n.attribute)]
    assert empty
    assert drop_empty_reduce_axes(model) == len(empty)
    assert drop_empty_reduce_axes(model) == 0


def _squeeze_module(axis: int):
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 192), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.adaptive_avg_pool2d(bb.emit(relax.op.expand_dims(x, axis=[2])), [1, 8]))
            out = bb.emit_output(relax.op.squeeze(y, axis=[axis]))
        bb.emit_func_output(out)
    return bb.get()


def test_negative_squeeze_axes_are_made_non_negative_before_convert_layout():
    """TVM's ConvertLayout crashes (std::bad_alloc) on squeeze(axis=-2); squeeze(axis=2) is the same op."""
    from tvm import relax

    from edgekit.compile.graph_passes import squeeze_axes_non_negative

    fixed = squeeze_axes_non_negative()(_squeeze_module(-2))
    assert "axis=[2]" in fixed["main"].script()
    relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]})(fixed)  # does not crash
    assert fixed["main"].script() == squeeze_axes_non_negative()(_squeeze_module(2))["main"].script()


def test_transposed_convs_stay_nchw_through_the_layout_pass():
    """conv2d_transpose legalizes only as NCHW/IOHW in TVM 0.27: the NHWC layout pass must not convert it."""
    from edgekit.compile.build import optimize_graph, resolve_tvm_target
    from edgekit.compile.frontend import import_model
    from edgekit.targets import load_target

    model, inputs = build_family("upsample-decoder")
    mod = optimize_graph(import_model(model, example_inputs=inputs).mod, resolve_tvm_target(load_target("host")))
    text = mod["main"].script()
    assert 'data_layout="NHWC", kernel_layout="HWIO"' in text  # the convs are converted
    assert text.count("conv2d_transpose") == 2 and 'conv2d_transpose(' in text
    assert all('data_layout="NCHW"' in line for line in text.splitlines() if "conv2d_transpose(" in line)


# ---------------------------------------------------------------------------------------- fallback, errors


class ManualNorm(torch.nn.Module):
    """A hand-written norm with torch.var_mean, which TVM 0.27's torch frontend lacks (ONNX has it)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        var, mean = torch.var_mean(y, dim=1, keepdim=True)
        return (y - mean) / torch.sqrt(var + 1e-5)


def test_failing_pt2_route_falls_back_to_onnx_and_says_so(tmp_path):
    from edgekit.compile import compile_model

    model = ManualNorm().eval()
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "norm.pt2"
    torch.export.save(torch.export.export(model, (x,)), path)
    compiled = compile_model(str(path), "host", out_dir=tmp_path / "out", tuning=False, reference_inputs=[x.numpy()])
    record = compiled.manifest["model"]
    assert record["frontend"] == "onnx"
    assert record["fallback"]["from"] == "torch.export" and record["fallback"]["exit_code"] == 10
    assert "var_mean" in record["fallback"]["reason"]
    with torch.no_grad():
        expected = model(x).numpy()
    assert relative_error(run_here(compiled)[0], expected) <= RELATIVE_TOLERANCE


def run_cli(capsys, *argv):
    from edgekit.cli.main import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_frontend_failure_reaches_the_cli_as_exit_10_with_stage_and_node(capsys, tmp_path):
    """TVM's ONNX frontend raising inside its node loop (it cannot read an empty list attribute) ->
    exit 10 naming the frontend, the op and the node, and no traceback unless -v."""
    import onnx
    from onnx import AttributeProto, TensorProto, helper

    transpose = helper.make_node("Transpose", ["h"], ["y"], name="head_transpose")
    transpose.attribute.append(helper.make_attribute("perm", [], attr_type=AttributeProto.INTS))
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["h"], name="relu0"), transpose],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])])
    path = tmp_path / "transpose.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    code, _, err = run_cli(capsys, "compile", "--model", str(path), "-o", str(tmp_path / "out"))
    assert code == 10, err
    assert "onnx frontend" in err and "Transpose at node 'head_transpose'" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "-v", "compile", "--model", str(path), "-o", str(tmp_path / "out"))
    assert code == 10 and "Traceback" in err and "onnx_frontend.py" in err  # -v shows TVM's own trace


def test_failure_in_tvm_graph_passes_is_exit_11_naming_the_stage(capsys, tmp_path, monkeypatch, model_files):
    """A TVM pass raising (here: made to, inside the layout pass) -> exit 11, the stage named, no trace."""
    import edgekit.compile.graph_passes as graph_passes

    def broken():
        import tvm

        @tvm.transform.module_pass(opt_level=0, name="Broken")
        def _pass(mod, _ctx):
            raise AssertionError("emit_te now only supports Tensor that has ShapeExpr shape")

        return _pass

    monkeypatch.setattr(graph_passes, "squeeze_axes_non_negative", broken)
    code, _, err = run_cli(capsys, "compile", "--model", str(model_files["silu", "onnx"]), "-o", str(tmp_path))
    assert code == 11, err
    assert "graph passes" in err and "AssertionError" in err and "emit_te" in err and "Traceback" not in err


def test_an_unexpected_exception_is_one_line_without_traceback(capsys, tmp_path, monkeypatch, model_files):
    import edgekit.compile as compile_package

    def crash(*_args, **_kwargs):
        raise KeyError("something edgekit did not foresee")

    monkeypatch.setattr(compile_package, "compile_model", crash)
    code, _, err = run_cli(capsys, "compile", "--model", str(model_files["silu", "pt2"]), "-o", str(tmp_path))
    assert code == 1 and "internal error: KeyError" in err and "-v" in err and "Traceback" not in err
