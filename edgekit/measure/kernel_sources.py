"""Which PyTorch modules each fused TVM kernel was built from: the cost card's link to the user's model.

TVM's torch frontend names its bindings ``lv``, ``lv1``...; layout and folding passes make new ones, so names
do not carry the model through compilation.  What does survive is the order of the heavy ops: import emits one
binding per FX node in graph order, the graph passes rewrite bindings in place, and legalization turns each op
into a ``call_tir`` of a PrimFunc named for it (``conv2d3``, ``matmul1``).  So, before fusion, the k-th call of
an op family (convolutions, matmuls, pools, softmax, layer norm) is the k-th FX node of that family, whose
``nn_module_stack`` names the module.  After fusion each kernel still calls those PrimFuncs inside, and the
calls of one PrimFunc keep their order, which links every kernel to the FX nodes, and so the modules, it was
fused from.  Kernels made only of transposes, reshapes and copies, and matched to no module, exist because of
compilation (NHWC layouts, the flatten's copy) and are marked so.

The trace re-runs edgekit's own graph passes and TVM's lowering up to fusion (the passes tuning extracts its
tasks after: ``edgekit.compile.build.lowering_passes``), so the kernels are the ones the build made.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

PREPACKED_KERNEL_SUFFIX = "_prepacked"
# FX op (aten name, overload dropped) -> the family its legalized PrimFuncs are named for.
FX_FAMILIES = {
    "convolution": "conv", "conv2d": "conv", "conv1d": "conv", "conv_transpose2d": "conv",
    "linear": "matmul", "addmm": "matmul", "mm": "matmul", "matmul": "matmul", "bmm": "matmul",
    "max_pool2d": "max_pool", "max_pool2d_with_indices": "max_pool", "avg_pool2d": "avg_pool",
    "adaptive_avg_pool2d": "mean", "mean": "mean", "softmax": "softmax", "_softmax": "softmax",
    "layer_norm": "layer_norm", "native_layer_norm": "layer_norm",
}
# PrimFunc name (trailing digits dropped) -> family.
TIR_FAMILIES = {
    "conv2d": "conv", "conv1d": "conv", "conv3d": "conv", "conv2d_transpose": "conv", "conv1d_transpose": "conv",
    "group_conv2d": "conv", "matmul": "matmul", "dense": "matmul", "batch_matmul": "matmul",
    "max_pool2d": "max_pool", "avg_pool2d": "avg_pool", "adaptive_avg_pool2d": "mean", "mean": "mean",
    "softmax": "softmax", "layer_norm": "layer_norm", "winograd_gemm": "conv",
}
# A Winograd conv (edgekit.compile.winograd) is three PrimFuncs in a row: input transform, GEMM (the conv's
# family member, above), output transform.  The transforms take the anchor of the GEMM they surround.
WINOGRAD_INPUT, WINOGRAD_OUTPUT = "winograd_input_transform", "winograd_output_transform"
# Elementwise FX ops a conv or matmul's epilogue is made of (BatchNorm folds into the conv): their modules are
# named beside the anchor's, as fusion puts them in its kernel.
EPILOGUE_FX_OPS = {"_native_batch_norm_legit_no_training", "batch_norm", "relu", "relu_", "relu6", "hardtanh",
                   "hardtanh_", "silu", "silu_", "gelu", "sigmoid", "hardswish", "hardswish_", "add", "add_", "mul",
                   "clamp", "getitem"}
# Ops that move data without computing: a kernel of only these is layout work.
LAYOUT_OPS = {"transpose", "reshape", "layout_transform", "copy", "squeeze", "expand_dims", "permute_dims",
              "flatten", "concatenate", "split", "strided_slice", "take"}


@dataclass
class KernelSource:
    """Where one fused kernel came from."""

    name: str
    ops: list[str]  # the PrimFuncs fused into it, digits dropped: ["conv2d", "add", "relu"]
    modules: list[str] = field(default_factory=list)  # module paths, in model order ("" is the top module)
    module_types: list[str] = field(default_factory=list)
    compilation_artifact: bool = False  # layout work the compiler added, matched to no module

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ops": self.ops, "modules": self.modules, "module_types": self.module_types,
                "compilation_artifact": self.compilation_artifact}


def op_name(prim_func_name: str) -> str:
    return re.sub(r"\d+$", "", prim_func_name)


def fx_anchors(program) -> dict[str, list[list[tuple[str, str]]]]:
    """Per family, for each FX node of that family in graph order: the (module path, module type) of the node,
    then of the elementwise epilogue nodes that follow it alone (its BatchNorm, activation, residual add)."""
    anchors: dict[str, list[list[tuple[str, str]]]] = {}
    for node in program.graph.nodes:
        family = FX_FAMILIES.get(_fx_op(node))
        if family is not None:
            anchors.setdefault(family, []).append([_fx_module(node), *map(_fx_module, _epilogue(node))])
    return anchors


def fx_module_macs(program) -> dict[str, int]:
    """MACs of every convolution and linear node, summed by module path, from the shapes torch.export
    recorded: output elements x the weight's elements per output channel.  Works for a .pt2 alone."""
    macs: dict[str, int] = {}
    for node in program.graph.nodes:
        op = _fx_op(node)
        if op not in ("convolution", "conv2d", "conv1d", "linear"):
            continue
        out, weight = node.meta.get("val"), getattr(node.args[1], "meta", {}).get("val")
        if out is None or weight is None or not hasattr(out, "numel"):
            continue
        per_output = 1
        for d in weight.shape[1:]:  # OIHW / OI: I/groups x kernel elements per output channel
            per_output *= int(d)
        path = _fx_module(node)[0]
        macs[path] = macs.get(path, 0) + int(out.numel()) * per_output
    return macs


def _fx_op(node) -> str | None:
    if node.op != "call_function":
        return None
    return getattr(node.target, "__name__", str(node.target)).split(".")[0]


def _fx_module(node) -> tuple[str, str]:
    stack = node.meta.get("nn_module_stack") or {}
    path, kind = list(stack.values())[-1] if stack else ("", "")
    return _clean_path(path), _type_name(kind)


def _epilogue(node) -> list:
    chain, current = [], node
    while len(current.users) == 1:
        (user,) = current.users
        if _fx_op(user) not in EPILOGUE_FX_OPS:
            break
        chain.append(user)
        current = user
    return [n for n in chain if _fx_op(n) != "getitem"]


def trace_kernel_sources(program, imported_mod, target) -> dict[str, KernelSource]:
    """Kernel name -> KernelSource, for ``imported_mod`` (imported from ``program``) built for ``target``."""
    import tvm

    from edgekit.compile.build import lowering_passes, optimize_graph

    captured: dict[str, Any] = {}

    @tvm.ir.instrument.pass_instrument
    class _AroundFusion:
        def run_before_pass(self, mod, info):
            if info.name == "FuseOps":
                captured["before"] = mod

        def run_after_pass(self, mod, info):
            if info.name == "FuseOps":
                captured["after"] = mod

    with target:
        mod = optimize_graph(imported_mod, target)
        with tvm.transform.PassContext(instruments=[_AroundFusion()]):
            tvm.transform.Sequential(lowering_passes(target))(mod)
    return _link(fx_anchors(program), captured["before"], captured["after"])


def _link(anchors, before, after) -> dict[str, KernelSource]:
    # Before fusion: each call of PrimFunc P -> its ordinal among its family's calls -> an FX anchor.
    family_seen: dict[str, int] = {}
    calls_of: dict[str, list[tuple[str, int]]] = {}  # P -> [(family, ordinal)] in order
    pending_inputs: list[str] = []  # Winograd input transforms waiting for their GEMM
    last_conv: tuple[str, int] | None = None
    for callee in _call_tir_callees(before["main"]):
        op = op_name(callee)
        if op == WINOGRAD_INPUT:
            pending_inputs.append(callee)
            continue
        if op == WINOGRAD_OUTPUT:
            if last_conv is not None:
                calls_of.setdefault(callee, []).append(last_conv)
            continue
        family = TIR_FAMILIES.get(op)
        if family is None:
            continue
        ordinal = family_seen.get(family, 0)
        family_seen[family] = ordinal + 1
        calls_of.setdefault(callee, []).append((family, ordinal))
        if op == "winograd_gemm":
            last_conv = (family, ordinal)
            for transform in pending_inputs:
                calls_of.setdefault(transform, []).append(last_conv)
            pending_inputs = []
    # A family whose counts disagree (an op the frontend split or merged) is not matched by order at all.
    trusted = {f for f, n in family_seen.items() if len(anchors.get(f, [])) == n}

    sources: dict[str, KernelSource] = {}
    used: dict[str, int] = {}
    functions = {gv.name_hint if hasattr(gv, "name_hint") else gv.name: f for gv, f in after.functions.items()}
    for kernel, inner in _kernel_calls(after["main"], functions):
        source = sources.setdefault(kernel, KernelSource(name=kernel, ops=[op_name(p) for p in inner]))
        for callee in inner:
            k = used.get(callee, 0)
            used[callee] = k + 1
            if k >= len(calls_of.get(callee, [])):
                continue
            family, ordinal = calls_of[callee][k]
            if family in trusted:
                for path, kind in anchors[family][ordinal]:
                    if path not in source.modules:
                        source.modules.append(path)
                        source.module_types.append(kind)
    for source in sources.values():
        source.compilation_artifact = not source.modules and set(source.ops) <= LAYOUT_OPS
    # A kernel whose weights are packed at compile time is called NAME_prepacked in the library (TVM's
    # SplitLayoutRewritePreproc moves the packing out of NAME; edgekit.compile.weight_prepack folds it).
    for name in list(sources):
        sources.setdefault(name + PREPACKED_KERNEL_SUFFIX, sources[name])
    return sources


def _call_tir_callees(func) -> list[str]:
    """Names of the PrimFuncs ``func`` calls with call_tir, in binding order."""
    names = []
    for block in func.body.blocks:
        for binding in block.bindings:
            callee = _tir_callee(binding.value)
            if callee is not None:
                names.append(callee)
    return names


def _kernel_calls(main, functions) -> list[tuple[str, list[str]]]:
    """(kernel name, the PrimFuncs it runs) for each kernel call of ``main``, in order.

    A fused group is a call of a Relax function (its name is the kernel's); an op left alone is a call_tir of
    its PrimFunc (the kernel's name is the PrimFunc's).
    """
    from tvm import relax

    out = []
    for block in main.body.blocks:
        for binding in block.bindings:
            value = binding.value
            callee = _tir_callee(value)
            if callee is not None:
                out.append((callee, [callee]))
            elif isinstance(value, relax.Call) and isinstance(value.op, relax.GlobalVar):
                name = value.op.name_hint if hasattr(value.op, "name_hint") else value.op.name
                func = functions.get(name)
                if isinstance(func, relax.Function):
                    out.append((name, _call_tir_callees(func)))
    return out


def _tir_callee(value) -> str | None:
    from tvm import relax

    if isinstance(value, relax.Call) and getattr(value.op, "name", None) == "relax.call_tir":
        gv = value.args[0]
        return gv.name_hint if hasattr(gv, "name_hint") else gv.name
    return None


def _clean_path(path: str) -> str:
    """torch.export writes module paths as L['self'].layer1[0].conv1 in some versions: make them layer1.0.conv1."""
    path = path.replace("L['self']", "").replace("['", ".").replace("']", "")
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    return path.strip(".")


def _type_name(kind) -> str:
    text = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    return text.rsplit(".", 1)[-1].strip("'>")
