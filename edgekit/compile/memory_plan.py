"""The memory an artifact needs beside the runtime: its constants (weights) and its planned workspace.

Read from the fully lowered Relax module, the one the library is built from, so the figures are what the
device allocates: constants after BatchNorm folding, layout changes and int8 packing; workspace as TVM's
static memory planner laid it out (``alloc_storage`` calls with constant sizes).  The module is caught with
a pass instrument around the build (``capture_lowered``), so the build itself is not changed.
"""

from __future__ import annotations

import contextlib
from typing import Any

# The ops that allocate planned storage: before and after VMBuiltinLower.
_STORAGE_OPS = ("relax.memory.alloc_storage", "relax.vm.alloc_storage")


class _Lowered:
    mod = None


@contextlib.contextmanager
def capture_lowered():
    """Within it, every pass run records its output; ``.mod`` is then the last one, the fully lowered module."""
    import tvm

    from tvm import relax

    lowered = _Lowered()

    @tvm.ir.instrument.pass_instrument
    class _Capture:
        def run_after_pass(self, mod, info):
            # The whole pipeline finishes after every pass nested in it; code generation then runs TIR-only
            # passes on the kernels alone, which hold no Relax function and are not the model.
            if any(isinstance(f, relax.Function) for f in mod.functions.values()):
                lowered.mod = mod

    current = tvm.transform.PassContext.current()
    context = tvm.transform.PassContext(opt_level=current.opt_level, required_pass=list(current.required_pass),
                                        disabled_pass=list(current.disabled_pass), config=dict(current.config),
                                        instruments=[*current.instruments, _Capture()])
    with context:
        yield lowered


def memory_of(mod) -> dict[str, Any]:
    """{"constant_bytes", "workspace_bytes", "model_memory_bytes", "dynamic_allocations"} of a lowered module.

    ``dynamic_allocations`` counts storage whose size is only known at run time (not in workspace_bytes).
    """
    from tvm import relax

    constants: dict[int, int] = {}
    sizes = {"workspace": 0, "dynamic": 0}

    @relax.expr_functor.visitor
    class _Visitor(relax.PyExprVisitor):
        def visit_generic_const_(self, op):  # relax.Constant, named GenericConst in 0.27
            data = getattr(op, "value", None)  # a tensor; `data` in older TVM
            if data is None:
                data = getattr(op, "data", None)
            shape, dtype = getattr(data, "shape", None), getattr(data, "dtype", None)
            if shape is not None and dtype is not None:  # sized from shape and dtype: no copy to the host
                count = 1
                for d in shape:
                    count *= int(d)
                constants[op.__hash__()] = count * _dtype_bytes(str(dtype))

        def visit_call_(self, op):
            if isinstance(op.op, tvm_op_type()) and op.op.name in _STORAGE_OPS:
                size = _constant_size(op.args[0])
                if size is None:
                    sizes["dynamic"] += 1
                else:
                    sizes["workspace"] += size
            for arg in op.args:
                self.visit_expr(arg)

    for _, func in mod.functions.items():
        if isinstance(func, relax.Function):
            _Visitor().visit_expr(func)
    constant_bytes = sum(constants.values())
    return {"constant_bytes": constant_bytes, "workspace_bytes": sizes["workspace"],
            "model_memory_bytes": constant_bytes + sizes["workspace"], "dynamic_allocations": sizes["dynamic"]}


def _dtype_bytes(dtype: str) -> int:
    import tvm

    kind = tvm.runtime.DataType(dtype)
    return max(1, kind.bits * kind.lanes // 8)


def tvm_op_type():
    import tvm

    return tvm.ir.Op


def _constant_size(arg) -> int | None:
    """The byte size of an alloc_storage: a ShapeExpr of one constant integer."""
    from tvm import relax, tirx as tir

    if isinstance(arg, relax.ShapeExpr) and len(arg.values) == 1 and isinstance(arg.values[0], tir.IntImm):
        return int(arg.values[0].value)
    return None
