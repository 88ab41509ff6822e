"""Relax module -> shared library for one target profile.

Graph passes first (BatchNorm folded into the convolution before inference
decomposition, or it is not folded at all), then TVM's per-target default
pipeline, which is what fuses operators and folds constants; plain
``tvm.compile`` on CPU does neither.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from edgekit.compile.tvm_env import cuda_codegen_available, import_tvm
from edgekit.errors import CompileError, EdgekitError, ToolchainError
from edgekit.targets import TargetProfile

# Debian package that provides each cross compiler the profiles name.
_COMPILER_PACKAGES = {
    "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu",
    "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
    "arm-linux-gnueabihf-g++": "g++-arm-linux-gnueabihf",
    "arm-linux-gnueabihf-gcc": "gcc-arm-linux-gnueabihf",
}


def resolve_tvm_target(profile: TargetProfile):
    """The profile's target as a ``tvm.target.Target``; ``mcpu = "native"`` means this machine's CPU."""
    tvm = import_tvm()
    spec = dict(profile.tvm_target)
    host = spec.pop("host", None)
    if spec.get("mcpu") == "native":
        native = tvm.target.Target.from_device(tvm.cpu())
        spec.update(mcpu=str(native.attrs["mcpu"]), mtriple=str(native.attrs["mtriple"]))
    if spec.get("kind") == "llvm":
        spec.setdefault("num-cores", os.cpu_count() or 1)  # MetaSchedule needs it
        width = _x86_vector_width(spec)
        if width and "vector-width" not in spec:
            spec["vector-width"] = width
    try:
        return tvm.target.Target(spec, host=host) if host else tvm.target.Target(spec)
    except Exception as exc:
        raise CompileError(f"TVM rejects the target of profile '{profile.name}' ({profile.source}): "
                           f"{str(exc).splitlines()[0][:300]}") from None


def _x86_vector_width(spec: dict) -> int | None:
    """The vector width of an x86 llvm target, from its CPU and features (None: not x86).

    TVM's llvm_get_vector_width assumes 512 bits on every x86_64 target that does not say,
    so an AVX2 machine would get 16-lane loops split in two by LLVM; the schedules'
    register tiles (edgekit.compile.schedules) are sized from the same width.
    """
    triple = str(spec.get("mtriple", "") or "")
    if triple and not triple.startswith(("x86_64", "i686", "i386")):
        return None
    if not triple and spec.get("mcpu") in (None, ""):
        return None
    import_tvm()
    from tvm.target import Target

    from edgekit.compile.schedules.target_info import cpu_info

    probe = {k: v for k, v in spec.items() if k not in ("vector-width", "host")}
    try:
        info = cpu_info(Target(probe))
    except Exception:  # noqa: BLE001  (the target is rejected below, with the profile's name)
        return None
    return info.vector_bits if info.arch == "x86_64" else None


def check_toolchain(profile: TargetProfile) -> None:
    """Fail before a long build if this machine cannot produce the profile's library."""
    compiler = profile.cross_compiler
    if compiler and shutil.which(compiler) is None:
        package = _COMPILER_PACKAGES.get(compiler, "the cross compiler for " + profile.triple)
        raise ToolchainError(f"cross compiler '{compiler}' for target '{profile.name}' is not installed",
                             hint=f"apt-get install {package} (tools/setup-system.sh installs it)")
    if profile.kind == "cuda":
        if shutil.which("nvcc") is None:
            raise ToolchainError(f"target '{profile.name}' needs nvcc (the CUDA toolkit) to build device code",
                                 hint="install the CUDA toolkit and put nvcc on PATH")
        if not cuda_codegen_available():
            raise ToolchainError(f"target '{profile.name}': TVM's CUDA runtime library could not be loaded here, "
                                 "so no device code can be built",
                                 hint="run the build in a fresh process (edgekit loads a stub CUDA driver before "
                                      "TVM is first imported)")


def optimize_graph(mod, target, *, winograd: bool = True):
    """Target-independent graph passes, then TVM's default pipeline for the target.

    ``winograd=False`` keeps every conv direct (tools/bench_winograd.py compares the two).
    """
    tvm = import_tvm()
    from tvm import relax

    from edgekit.compile.const_fold import FoldConstantsWithNumpy
    from edgekit.compile.graph_passes import (elementwise_out_of_reshape_pairs, explicit_pads_into_convs,
                                              integer_quantized_ops, layout_passes, softmax_rows_on_the_vector_grid)
    from edgekit.compile.schedules import cpu_info
    from edgekit.compile.winograd import winograd_convs

    cpu = cpu_info(target) if target.kind.name == "llvm" else None
    # Integer kernels first (CPU only): FoldConstant would turn the int8 weights into float constants.
    integer = [integer_quantized_ops(unsigned_activations=_dot_product_is_unsigned(target),
                                     float_depthwise=cpu.arch == "x86_64")] if cpu else []
    passes = [explicit_pads_into_convs(), *integer, relax.transform.FoldBatchnormToConv2D(), relax.transform.DecomposeOpsForInference(),
              relax.transform.CanonicalizeBindings(), FoldConstantsWithNumpy(), relax.transform.FoldConstant(),
              *layout_passes(target)]
    if cpu:
        passes += [softmax_rows_on_the_vector_grid(cpu.f32_lanes), elementwise_out_of_reshape_pairs()]
        if winograd and cpu.arch == "x86_64":
            # Measured on x86 only (tools/bench_winograd.py); ARM keeps direct convs until a board says otherwise.
            passes += [winograd_convs(), relax.transform.CanonicalizeBindings()]
    try:
        return tvm.transform.Sequential(passes)(mod)
    except EdgekitError:
        raise
    except Exception as exc:  # noqa: BLE001  (TVM raises anything from its passes: InternalError, AssertionError)
        if _edgekit_bug(exc):
            raise  # not the model's fault: no ONNX fallback may hide it
        raise CompileError(_stage_failure("graph passes (BatchNorm folding, constant folding, NHWC layout)", exc),
                           hint="run with -v for TVM's trace; compiling the .onnx (or .pt2) form of the model "
                                "takes the other frontend") from None


def _dot_product_is_unsigned(target) -> bool:
    """The target's int8 dot product takes unsigned activations (x86 VNNI's vpdpbusd: u8 x s8)."""
    from edgekit.compile.schedules import cpu_info

    info = cpu_info(target)
    return info.arch == "x86_64" and ((info.avx512 and info.avx512_vnni) or info.avx_vnni)


def lowering_passes(target) -> list:
    """Relax -> fused TIR functions: the part of the default pipeline that decides what a kernel is.

    Tuning (edgekit.compile.tune) extracts its tasks after exactly these passes, so the
    fused functions a later build looks up in the tuning database are structurally the
    ones that were tuned.
    """
    stages = _cpu_pipeline_stages()
    return [*stages.library_dispatch_passes(target), *stages.legalize_passes(target)]


def _cpu_pipeline_stages():
    # relax.pipeline.dataflow_lower_passes() fails for llvm in 0.27 (cpu_generic/__init__.py does not
    # export it), so take the stages from the CPU backend's own module.
    import_tvm()
    from tvm.relax.backend.cpu_generic import pipeline

    return pipeline


def cpu_pipeline(target, *, database=None, schedule_log=None):
    """TVM's CPU pipeline with schedules: tuning records first (where ``database`` has them),
    then edgekit's default rules (edgekit.compile.schedules) for every other kernel.

    ``schedule_log`` (a ScheduleLog) receives which rule scheduled each kernel, and which
    kernels no rule took, for the compile report.
    """
    tvm = import_tvm()
    from tvm import relax

    from edgekit.compile.schedules import ApplySchedules, fast_math
    from edgekit.compile.weight_prepack import FoldWeightPrepack

    # Vectorizable exp/erf (softmax, GELU, SiLU): libm's scalar calls split every vector back into
    # lanes (softmax ran at 5.9x ONNX Runtime without it; see schedules/fast_math.py).
    fast_math.enable()

    @tvm.transform.module_pass(opt_level=0, name="EdgekitCpuPipeline")
    def _pipeline(mod, _ctx):
        stages = _cpu_pipeline_stages()
        with target:
            seq = list(lowering_passes(target))
            if database is not None:
                with database:
                    mod = tvm.transform.Sequential(
                        [*seq, relax.transform.MetaScheduleApplyDatabase(enable_warning=False)])(mod)
                seq = []
            seq += [ApplySchedules(target, schedule_log), relax.transform.SplitLayoutRewritePreproc(),
                    FoldWeightPrepack(), *stages.dataflow_lower_passes(target), *stages.finalize_passes(target)]
            return tvm.transform.Sequential(seq)(mod)

    return _pipeline


def build_library(mod, profile: TargetProfile, library_path: Path, *, tuning_database=None, schedule_log=None,
                  graph_optimized: bool = False):
    """Compile ``mod`` for ``profile`` and write the shared library to ``library_path``.

    ``tuning_database`` (a MetaSchedule database, see edgekit.compile.tune) replaces the
    default schedules of the kernels it has records for; edgekit's rules schedule the
    others (CPU targets).  ``schedule_log`` receives what scheduled each kernel.
    ``graph_optimized``: ``mod`` already went through ``optimize_graph`` (compile_model runs
    it once for the tuning lookup and the build).
    """
    tvm = import_tvm()
    from tvm import relax

    check_toolchain(profile)
    target = resolve_tvm_target(profile)
    if not graph_optimized:
        mod = optimize_graph(mod, target)
    previous_mode = os.environ.get("TVM_CUDA_COMPILE_MODE")
    if profile.kind == "cuda":
        os.environ["TVM_CUDA_COMPILE_MODE"] = "nvcc"  # nvrtc needs cuda-bindings and a driver
        import tvm.support.nvcc  # noqa: F401  registers the compile callback
    try:
        with target:
            pipeline = (cpu_pipeline(target, database=tuning_database, schedule_log=schedule_log)
                        if target.kind.name == "llvm" else relax.get_default_pipeline(target))
            executable = tvm.compile(mod, target, relax_pipeline=pipeline)
    except Exception as exc:
        raise _explain_build_failure(exc, profile) from None
    finally:
        if profile.kind == "cuda":
            _restore_env("TVM_CUDA_COMPILE_MODE", previous_mode)
    kwargs = {}
    if profile.cross_compiler:
        kwargs["fcompile"] = tvm.support.cc.cross_compiler(profile.cross_compiler)
    tmp = library_path.with_name(library_path.name + ".tmp.so")
    try:
        executable.export_library(str(tmp), **kwargs)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise CompileError(f"linking the library for '{profile.name}' with "
                           f"{profile.cross_compiler or 'the host compiler'} failed: {_tail(exc)}") from None
    os.replace(tmp, library_path)
    return target


def _explain_build_failure(exc: Exception, profile: TargetProfile) -> Exception:
    text = str(exc)
    unsupported_arch = re.search(r"Unsupported gpu architecture '([^']+)'", text)
    if unsupported_arch:
        return ToolchainError(
            f"target '{profile.name}': this machine's nvcc cannot build for {profile.cuda_arch} "
            f"({unsupported_arch.group(0)}); CUDA 13 dropped Maxwell/Volta-era Jetson GPUs",
            hint="build on a machine with CUDA <= 12.x (e.g. JetPack's own toolkit on the board)")
    if "nvcc" in text and "not found" in text.lower():
        return ToolchainError(f"target '{profile.name}': nvcc not found", hint="install the CUDA toolkit")
    if _edgekit_bug(exc):
        return exc  # not the model's fault: no ONNX fallback may hide it (the CLI reports an internal error)
    return CompileError(_stage_failure(f"lowering and code generation for target '{profile.name}'", exc))


def _edgekit_bug(exc: Exception) -> bool:
    """A Python programming error raised by edgekit's own code (one of its passes), not by TVM."""
    if not isinstance(exc, (AttributeError, TypeError, NameError, KeyError, IndexError, UnboundLocalError)):
        return False
    tb, last = exc.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    package = Path(__file__).resolve().parents[1]
    return last is not None and Path(last.tb_frame.f_code.co_filename).resolve().is_relative_to(package)


def _stage_failure(stage: str, exc: Exception) -> str:
    """``<stage> failed [at <op>]: <Type>: <TVM's last lines>`` for a failure inside a TVM pass."""
    from edgekit.compile.frontend import failure_site

    site = failure_site(exc) or _offending_call(str(exc))
    return f"{stage} failed{f' at {site}' if site else ''}: {type(exc).__name__}: {_tail(exc)}"


def _offending_call(text: str) -> str | None:
    """The Relax op a TVM C++ error names (``Offending call: R.nn.conv2d_transpose(...)``), if any."""
    match = re.search(r"\bR\.([A-Za-z_][\w.]*)\(", text)
    return f"Relax op relax.{match.group(1)}" if match else None


def _tail(exc: Exception, lines: int = 6) -> str:
    return " | ".join(line.strip() for line in str(exc).strip().splitlines()[-lines:])[:800]


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
