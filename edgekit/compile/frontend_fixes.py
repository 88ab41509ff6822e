"""Rewrites of a torch ExportedProgram that TVM 0.27's torch frontend, or the passes after it, mis-handle.

Each fix is a function ``fix(graph) -> int`` (the number of nodes it changed) that rewrites the
FX graph of an ExportedProgram into an equivalent one; each documents the failure it fixes and
is tested in tests/test_architectures.py through the model that needed it.  ``apply_frontend_fixes``
runs them all on a copy of the program, so the user's program (and the reference edgekit checks
the artifact against) stays as it was given.
"""

from __future__ import annotations

import copy


def normalize_squeeze_dims(graph) -> int:
    """``aten.squeeze.dim(x, -2)`` -> ``aten.squeeze.dim(x, rank - 2)``.

    Failure fixed: ``nn.MultiheadAttention`` (and so ``nn.TransformerEncoderLayer``, every ViT)
    splits its packed q/k/v projection with ``unsqueeze(0).transpose(0, -2).squeeze(-2)``.  The
    torch frontend passes the negative axis through to ``relax.op.squeeze``, and TVM 0.27's
    ConvertLayout (which edgekit runs to make convolutions NHWC) crashes on a squeeze with a
    negative axis whose input carries a converted layout: ``tvm.error.InternalError:
    std::bad_alloc`` (issue 11).  A model with a patch-embedding conv before its encoder reaches
    that case; the same encoder without a conv does not.  Non-negative axes are handled.
    """
    import torch

    aten = torch.ops.aten
    changed = 0
    for node in graph.nodes:
        if node.op != "call_function" or node.target not in (aten.squeeze.dim, aten.squeeze.dims):
            continue
        source = node.args[0]
        value = source.meta.get("val") if hasattr(source, "meta") else None
        if value is None:
            continue
        rank = value.dim()
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        if isinstance(dims, int):
            if dims < 0:
                node.args = (source, dims % max(rank, 1), *node.args[2:])
                changed += 1
        elif isinstance(dims, (list, tuple)) and any(d < 0 for d in dims):
            node.args = (source, [d % max(rank, 1) for d in dims], *node.args[2:])
            changed += 1
    return changed


# Applied in this order; each entry is independent of the others.
FIXES = (normalize_squeeze_dims,)


def apply_frontend_fixes(program):
    """``program`` with every fix of FIXES applied (a copy; the original is returned when none applies)."""
    if not any(_needs(fix, program) for fix in FIXES):
        return program
    fixed = copy.deepcopy(program)
    for fix in FIXES:
        fix(fixed.graph_module.graph)
    fixed.graph_module.graph.lint()
    fixed.graph_module.recompile()
    return fixed


def _needs(fix, program) -> bool:
    # Run the fix on a throwaway copy of the graph alone (no weights) to see whether it changes anything.
    return fix(_graph_copy(program.graph_module.graph)) > 0


def _graph_copy(graph):
    import torch

    new_graph = torch.fx.Graph()
    value_map: dict = {}
    new_graph.graph_copy(graph, value_map)
    # graph_copy copies node meta by reference: enough for reading shapes, and nothing here writes meta.
    return new_graph
