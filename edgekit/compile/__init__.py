"""Compile stage: a model in, a content-addressed artifact directory out."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.__about__ import __version__
from edgekit.artifacts import (LIBRARY_NAME, MANIFEST_NAME, REFERENCE_NAME, SCHEMA_VERSION, CompiledArtifact,
                               elf_machine, sha256_file)
from edgekit.errors import ArtifactError, CompileError, EdgekitError, UnsupportedOperatorError
from edgekit.targets import TargetProfile, load_target

DEFAULT_TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}
DEFAULT_OUT_DIR = Path("edgekit-artifacts")
# Bump when the graph passes or lowering change the generated code, so that no stale artifact is reused.
# 2: int8 integer kernels, NHWC convolutions on CPU; 3: default CPU schedules; 4: vectorized exp/erf on CPU;
# 5: squeeze-excitation convs, safe softmax and int8 Linear scheduled; 6: 256-bit VNNI int8 convs, float RGB stems;
# 7: batch-1 dense streamed by weight rows; ONNX shape arithmetic folded on import; int8 weights packed at compile time;
# 8: explicit zero pads merged into the next conv's padding; signed int8 1x1 convs shifted to u8 on VNNI; int8 SE pools;
# 9: nearbyint (int8 requantize) vectorized; 10: conv channel vectors of any width dividing the channels;
# 11: fp32 conv weights blocked by register tile ([O/block][KH][KW][I][block]), packed at compile time; softmax
# rows off the vector grid padded with -inf; depthwise convs read their input in place (padding inlined); x86 int8
# depthwise convs sum in float32; elementwise ops between a reshape pair applied in place (GELU fuses into its matmul)
# 12: 3x3 stride-1 fp32 convs as Winograd F(4x4)/F(2x2) on x86 (edgekit.compile.winograd)
PIPELINE_VERSION = 12

__all__ = ["compile_model", "DEFAULT_OUT_DIR"]

log = logging.getLogger("edgekit.compile")


def compile_model(model, target: str | TargetProfile, *, input_shapes=None, example_inputs=None,
                  out_dir: str | Path | None = None, recipe: dict[str, Any] | None = None,
                  frontend: str = "auto", tolerance: dict[str, float] | None = None,
                  reference_inputs: list[np.ndarray] | None = None, force: bool = False,
                  progress=None, tuning: str | Path | bool | None = "auto") -> CompiledArtifact:
    """Compile ``model`` for ``target`` into ``out_dir/<artifact_id>/`` and return the artifact.

    ``model`` is anything ``edgekit.models.load_model`` accepts: an ``nn.Module``, an
    ``ExportedProgram``, a ``CompressedModel`` (its recipe, reference input and int8 tolerance are
    used unless given here), a ``.pt2``/``.onnx``/``.pt`` file, ``"package.module:factory[@weights.pt]"``,
    ``"zoo:NAME"`` or an ``edgekit compress`` output directory.  The same model,
    recipe and target give the same id; an existing valid artifact is reused
    unless ``force``.  ``reference_inputs`` replaces the seeded random inputs
    used for the on-device output check (e.g. real images for a quantized model).
    A torch model whose torch.export route fails (an op TVM's torch frontend lacks, a failure in
    the graph passes or the build) is exported to ONNX in this process and built from that; the
    manifest's ``model.frontend`` names the route that built the artifact and ``model.fallback``
    why the first one was left (``frontend="torch.export"`` or ``"onnx"`` tries that route only).
    ``tuning``: ``"auto"`` applies the target's MetaSchedule database when one exists
    (written by ``edgekit tune``, see edgekit.compile.tune), a path names a database
    directory, ``False``/``None`` builds with TVM's default schedules.
    """
    from edgekit.compile.build import check_toolchain, resolve_tvm_target
    from edgekit.compile.frontend import import_model
    from edgekit.compile.tvm_env import import_tvm
    from edgekit.models import load_model

    step = progress or _null_progress
    profile = load_target(target)
    check_toolchain(profile)  # before the import, which can take seconds
    with step("importing model"):
        loaded = load_model(model)
        defaults = loaded.compile_defaults  # a compressed model's recipe, real input and int8 tolerance
        recipe = recipe if recipe is not None else defaults.get("recipe")
        tolerance = tolerance if tolerance is not None else defaults.get("tolerance")
        if reference_inputs is None and example_inputs is None and input_shapes is None:
            reference_inputs = defaults.get("reference_inputs")
            example_inputs = defaults.get("example_inputs")  # a pretrained zoo model's real inputs (token ids)
        try:
            imported, failure = import_model(loaded, input_shapes=input_shapes, example_inputs=example_inputs,
                                             frontend=frontend), None
        except (UnsupportedOperatorError, CompileError) as exc:
            imported, failure = None, exc
    tvm = import_tvm()
    tvm_target = resolve_tvm_target(profile)
    tolerance = {**DEFAULT_TOLERANCE, **(tolerance or {})}
    build = functools.partial(_compile_imported, profile=profile, tvm_target=tvm_target, tvm_version=tvm.__version__,
                              recipe=recipe, tolerance=tolerance, reference_inputs=reference_inputs, tuning=tuning,
                              out_dir=out_dir, force=force, step=step)
    if failure is None:
        try:
            return build(imported)
        except (UnsupportedOperatorError, CompileError) as exc:
            failure = exc
    # The torch.export route failed (import, graph passes or build): a torch model can still go through ONNX.
    if frontend != "auto" or (imported is not None and imported.frontend != "torch.export"):
        raise failure
    from edgekit.compile.frontend import alternative_route

    first = imported.frontend if imported is not None else "torch.export"
    with step("retrying through ONNX"):
        try:
            alternative = alternative_route(loaded, input_shapes=input_shapes, example_inputs=example_inputs)
        except EdgekitError as exc:
            raise _both_routes_failed(failure, first, "onnx", exc) from failure
    if alternative is None:
        raise failure
    log.info("the %s route failed (%s); building through %s instead", first, failure.message.splitlines()[0],
             alternative.frontend)
    try:
        return build(alternative, fallback={"from": first, "reason": failure.message, "exit_code": failure.exit_code})
    except (UnsupportedOperatorError, CompileError) as exc:
        raise _both_routes_failed(failure, first, alternative.frontend, exc) from failure


def _both_routes_failed(first_error, first: str, second: str, second_error) -> Exception:
    """The first route's error (its class and exit code), with what the second route said."""
    error = type(first_error)(f"{first_error.message}\n  the {second} route was tried too and failed: "
                              f"{second_error.message}", hint=first_error.hint)
    error.__context__ = second_error
    return error


def _compile_imported(imported, *, profile, tvm_target, tvm_version, recipe, tolerance, reference_inputs, tuning,
                      out_dir, force, step, fallback=None) -> CompiledArtifact:
    """Build one imported model (one frontend route) into its content-addressed artifact directory."""
    from edgekit.compile.build import build_library
    from edgekit.compile.memory_plan import capture_lowered, memory_of

    plan, optimized = _tuning_for(imported, profile, tvm_target, tuning)
    tuning_digest = plan.digest if plan is not None else None
    key = {
        "model": imported.content_sha256,
        "frontend": imported.frontend,
        "inputs": [s.to_dict() for s in imported.inputs],
        "target": str(tvm_target),
        "cross_compiler": profile.cross_compiler,
        "tvm_version": tvm_version,
        "edgekit_version": __version__,
        "pipeline_version": PIPELINE_VERSION,
        "recipe": recipe,
        "tolerance": tolerance,
        "reference_inputs": _hash_arrays(reference_inputs) if reference_inputs is not None else None,
    }
    if tuning_digest is not None:  # only then: untuned artifacts keep the ids they always had
        key["tuning_records"] = tuning_digest
    artifact_id = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    out_root = Path(out_dir or DEFAULT_OUT_DIR)
    final_dir = out_root / artifact_id
    if final_dir.exists() and not force:
        try:
            return CompiledArtifact.open(final_dir)
        except ArtifactError:
            shutil.rmtree(final_dir)  # a damaged earlier build: rebuild it

    out_root.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix=f".{artifact_id}.", dir=out_root))
    try:
        with step(f"building for {profile.name}"):
            from edgekit.compile.schedules import ScheduleLog

            schedule_log = ScheduleLog()
            # The graph passes ran once already when a database was consulted: the build reuses them.
            with capture_lowered() as lowered:  # the module the library is built from: its memory plan
                build_library(optimized if optimized is not None else imported.mod, profile, work_dir / LIBRARY_NAME,
                              graph_optimized=optimized is not None, schedule_log=schedule_log,
                              tuning_database=plan.database if plan is not None else None)
        inputs = reference_inputs if reference_inputs is not None else _seeded_inputs(imported.inputs)
        outputs = imported.reference(inputs)
        np.savez(work_dir / REFERENCE_NAME, **{f"in{i}": a for i, a in enumerate(inputs)},
                 **{f"out{i}": a for i, a in enumerate(outputs)})
        manifest = _manifest(artifact_id, profile, tvm_target, tvm_version, imported, outputs, work_dir,
                             recipe, tolerance)
        if lowered.mod is not None:
            try:
                manifest["memory"] = memory_of(lowered.mod)
            except Exception as exc:  # noqa: BLE001  a report field: never the reason a build fails
                manifest["memory"] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        if fallback is not None:  # which route built it, and why not the first one
            manifest["model"]["fallback"] = fallback
        if profile.kind == "cpu":
            manifest["schedules"] = schedule_log.to_dict()
        if tuning_digest is not None:
            manifest["tuning"] = {"database": str(plan.database_dir), "records_sha256": tuning_digest,
                                  "kernels_tuned": len(plan.applied),
                                  "kept_out_slower_than_default": plan.kept_out,
                                  "kept_out_not_transferable": plan.not_transferable}
        (work_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        if final_dir.exists():
            shutil.rmtree(final_dir)
        os.replace(work_dir, final_dir)  # readers never see a half-written artifact
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return CompiledArtifact.open(final_dir)


def _tuning_for(imported, profile, tvm_target, tuning):
    """(the records a build applies, ``imported.mod`` after the graph passes), or (None, None) without a
    database (then the module is not translated here: a cached artifact may need it never).

    The plan is a tuning_db.BuildPlan: the record chosen per kernel (anchor-block match, those
    measured slower than the default schedule kept out), their digest for the artifact id
    (None when no record concerns this model), and the database the build hands to
    MetaScheduleApplyDatabase.  The graph passes run here, once; the build takes their result.
    """
    if tuning is None or tuning is False or profile.kind != "cpu":
        return None, None  # GPU targets keep TVM's DLight schedules
    from edgekit.compile.build import optimize_graph
    from edgekit.compile.tune import plan_for_build
    from edgekit.compile.tuning_db import find_database

    if tuning == "auto":
        path = find_database(profile, tvm_target)
    else:
        path = Path(tuning)
        if not path.is_dir():
            raise CompileError(f"tuning database {path} does not exist", hint="run `edgekit tune` first")
    if path is None:
        return None, None
    optimized = optimize_graph(imported.mod, tvm_target)
    return plan_for_build(optimized, tvm_target, path, graph_optimized=True), optimized


def _seeded_inputs(specs) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = []
    for spec in specs:
        if spec.dtype.startswith("float"):
            arrays.append(rng.standard_normal(spec.shape).astype(spec.dtype))
        else:
            arrays.append(rng.integers(0, 8, size=spec.shape).astype(spec.dtype))
    return arrays


def _hash_arrays(arrays) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()


def _manifest(artifact_id, profile, tvm_target, tvm_version, imported, outputs, work_dir, recipe, tolerance):
    from edgekit.artifacts import TensorSpec

    output_specs = [TensorSpec(name=f"output{i}", shape=tuple(a.shape), dtype=str(a.dtype))
                    for i, a in enumerate(outputs)]
    files = {name: sha256_file(work_dir / name) for name in (LIBRARY_NAME, REFERENCE_NAME)}
    library_machine = elf_machine(work_dir / LIBRARY_NAME)
    if library_machine != profile.elf_machine:
        raise CompileError(f"built a {library_machine} library for target '{profile.name}', which needs "
                           f"{profile.elf_machine}", hint=f"check 'cross_compiler' in {profile.source}")
    return {
        "schema_version": SCHEMA_VERSION,
        "artifact_id": artifact_id,
        "library": LIBRARY_NAME,
        "reference": REFERENCE_NAME,
        "files": files,
        "target": {
            "name": profile.name,
            "kind": profile.kind,
            "arch": profile.arch,
            "elf_machine": profile.elf_machine,
            "tvm_target": json.loads(_target_json(tvm_target)),
            "cuda_arch": profile.cuda_arch,
            "runtime": profile.to_dict()["runtime"],
        },
        "tvm_version": tvm_version,
        "elf_machine": library_machine,
        "inputs": [s.to_dict() for s in imported.inputs],
        "outputs": [s.to_dict() for s in output_specs],
        "tolerance": tolerance,
        # how to measure it, as its profile says: read back at measure time, never looked up again by name
        "measure": profile.measure.profile_dict(),
        "recipe": recipe,
        "model": {"source": imported.source, "frontend": imported.frontend, "sha256": imported.content_sha256},
        "edgekit_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _target_json(tvm_target) -> str:
    text = str(tvm_target)
    try:
        json.loads(text)
        return text
    except json.JSONDecodeError:
        raise CompileError(f"unexpected TVM target text: {text[:200]}") from None


class _null_progress:
    def __init__(self, label):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
