"""The cost card: every kernel's time on the device, in the model's own terms.

``profile_model`` compiles (or reuses) the artifact, times every fused kernel on the device (the runner's
``--kernels``), links each kernel to the PyTorch modules it was fused from (kernel_sources.py), and adds what
the kernel does: MACs of its modules (from the shapes torch.export recorded), bytes its arguments move, the GFLOP/s
that gives, and that against the target profile's peak (``peak_gflops_per_core`` x threads).  Rows are
sorted by time; layout work the compiler added is marked as such.  ``CostCard`` renders a terminal table,
markdown, JSON and a PNG bar chart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# What `edgekit optimize` tries on a layer, by the kind of module that dominates a kernel.
OPTIMIZE_OPTIONS = {
    "Conv2d": "structured pruning of its output channels (the layer group's width), then --quantize int8",
    "Conv1d": "structured pruning of its output channels (the layer group's width), then --quantize int8",
    "Linear": "structured pruning of its output features, then --quantize int8",
}


@dataclass
class CostCard:
    artifact_id: str
    target: str
    device: dict[str, Any]
    threads: int
    emulated: bool
    model_median_ms: float
    model_stats: dict[str, Any]
    peak_gflops: float | None  # the device's fp32 peak at this thread count; None when the profile has none
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per kernel, slowest first
    suggestions: list[dict[str, Any]] = field(default_factory=list)  # the top layers and what optimize tries

    def to_dict(self) -> dict[str, Any]:
        return {"artifact_id": self.artifact_id, "target": self.target, "device": self.device,
                "threads": self.threads, "emulated": self.emulated, "model_median_ms": self.model_median_ms,
                "model_stats": self.model_stats, "peak_gflops": self.peak_gflops, "kernels": self.rows,
                "suggestions": self.suggestions}

    def table_lines(self, limit: int = 25) -> list[str]:
        lines = [f"{'share':>6} {'ms':>9} {'calls':>5} {'GFLOP/s':>8} {'of peak':>7} {'MMACs':>8} {'KiB':>8}  "
                 f"{'module(s)':<40} kernel"]
        for r in self.rows[:limit]:
            lines.append(f"{r['share']:>6.1%} {r['total_ms']:>9.4f} {r['calls']:>5} {_num(r['gflops'], '8.2f')} "
                         f"{_pct(r['peak_ratio'])} {r['macs'] / 1e6:>8.2f} {r['bytes'] / 1024:>8.1f}  "
                         f"{_where(r):<40} {r['name']}")
        if len(self.rows) > limit:
            lines.append(f"... {len(self.rows) - limit} more kernels in the JSON")
        return lines

    def markdown(self) -> str:
        note = " (EMULATED: not a measurement of the board)" if self.emulated else ""
        peak = f"{self.peak_gflops:g} GFLOP/s fp32 at {self.threads} thread(s)" if self.peak_gflops else "unknown"
        out = [f"# Cost card: {self.artifact_id} on {self.target}{note}", "",
               f"Whole model: median {self.model_median_ms:.4f} ms; device peak {peak}.", "",
               "| share | time (ms) | calls | GFLOP/s | of peak | MACs | bytes | module(s) | kernel | ops |",
               "|---:|---:|---:|---:|---:|---:|---:|---|---|---|"]
        for r in self.rows:
            out.append(f"| {r['share']:.1%} | {r['total_ms']:.4f} | {r['calls']} | {_num(r['gflops'], '.2f').strip()} "
                       f"| {_pct(r['peak_ratio']).strip()} | {r['macs']} | {r['bytes']} | {_where(r)} | `{r['name']}` "
                       f"| {' '.join(r['ops'])} |")
        if self.suggestions:
            out += ["", "## What `edgekit optimize` would try on the top layers", ""]
            out += [f"- `{s['module']}` ({s['share']:.1%}): {s['option']}" for s in self.suggestions]
        return "\n".join(out) + "\n"

    def plot(self, path: Path, limit: int = 20) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.rows[:limit][::-1]
        fig, ax = plt.subplots(figsize=(9, 0.35 * len(rows) + 1.5), dpi=110)
        colors = ["tab:gray" if r["compilation_artifact"] else "tab:blue" for r in rows]
        ax.barh([f"{_where(r)}  [{r['name']}]" for r in rows], [r["total_ms"] for r in rows], color=colors)
        ax.set_xlabel("time on the device per inference (ms)" + ("  [EMULATED]" if self.emulated else ""))
        ax.set_title(f"edgekit cost card: {self.artifact_id} on {self.target} (gray: compilation layout work)")
        ax.tick_params(axis="y", labelsize=7)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)

    def write(self, out_dir: Path) -> dict[str, str]:
        """cost_card.json, cost_card.md and cost_card.png in ``out_dir``; their paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {"json": out_dir / "cost_card.json", "markdown": out_dir / "cost_card.md",
                 "png": out_dir / "cost_card.png"}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        paths["markdown"].write_text(self.markdown())
        self.plot(paths["png"])
        return {k: str(v) for k, v in paths.items()}


def build_card(report, sources: dict, module_macs: dict[str, int], *, peak_gflops: float | None) -> CostCard:
    """Rows from a LatencyReport with per-kernel timings, the kernels' sources and each module's MACs."""
    total = sum(k["total_ms"] for k in report.kernels) or 1.0
    rows = []
    for k in report.kernels:
        source = sources.get(k["name"])
        modules = source.modules if source else []
        macs = sum(module_macs.get(m, 0) for m in modules)
        moved = k["calls"] * sum(_arg_bytes(a) for a in k.get("args", []))
        gflops = 2.0 * macs / (k["total_ms"] * 1e6) if macs and k["total_ms"] > 0 else None
        rows.append({"name": k["name"], "calls": k["calls"], "median_ms": k["median_ms"], "total_ms": k["total_ms"],
                     "share": k["total_ms"] / total, "modules": modules,
                     "module_types": source.module_types if source else [], "ops": source.ops if source else [],
                     "compilation_artifact": bool(source and source.compilation_artifact), "mapped": source is not None,
                     "macs": macs, "bytes": moved, "gflops": gflops,
                     "peak_ratio": gflops / peak_gflops if gflops and peak_gflops else None,
                     "args": k.get("args", [])})
    rows.sort(key=lambda r: -r["total_ms"])
    suggestions = []
    for r in rows:
        kind = next((t for t in r["module_types"] if t in OPTIMIZE_OPTIONS), None)
        if kind and len(suggestions) < 3:
            module = r["modules"][r["module_types"].index(kind)]
            suggestions.append({"module": module, "kernel": r["name"], "share": r["share"],
                                "option": OPTIMIZE_OPTIONS[kind]})
    return CostCard(artifact_id=report.artifact_id, target=report.target, device=report.device,
                    threads=report.threads, emulated=report.emulated, model_median_ms=report.median_ms,
                    model_stats=report.stats, peak_gflops=peak_gflops, rows=rows, suggestions=suggestions)


def profile_model(model, target="host", host=None, *, input_shapes=None, connect: dict | None = None,
                  out_dir: str | Path | None = None, emulated: bool = False, **measure) -> CostCard:
    """Compile ``model`` for ``target`` (a profile name or TargetProfile), time each kernel on ``host`` (this
    machine when None), and build the cost card.  ``measure``: measure_latency's overrides (repeats,
    kernel_repeats, threads...)."""
    from edgekit.compile import compile_model
    from edgekit.measure.protocol import measure_latency
    from edgekit.models import load_model
    from edgekit.targets import TargetProfile, load_target

    profile = target if isinstance(target, TargetProfile) else load_target(target)
    loaded = load_model(model)
    artifact = compile_model(loaded, profile, input_shapes=input_shapes, out_dir=out_dir)
    sources, macs = kernel_sources_for(loaded, profile, artifact)
    report = measure_latency(artifact, host, kernels=True, connect=connect, emulated=emulated, **measure)
    per_core = profile.peak_gflops_per_core
    return build_card(report, sources, macs, peak_gflops=per_core * report.threads if per_core else None)


def kernel_sources_for(model, profile, artifact) -> tuple[dict, dict[str, int]]:
    """({kernel name: KernelSource}, {module path: MACs}) for ``model`` (any spec) as ``artifact`` built it;
    both empty for an .onnx model, which has no module tree."""
    import numpy as np
    import torch

    from edgekit.compile.build import resolve_tvm_target
    from edgekit.compile.frontend import import_model
    from edgekit.measure.kernel_sources import fx_module_macs, trace_kernel_sources
    from edgekit.models import load_model

    loaded = load_model(model)
    program = loaded.exported
    if program is None and loaded.module is not None:
        reference = np.load(artifact.path / artifact.manifest["reference"])
        example = tuple(torch.from_numpy(reference[f"in{i}"]) for i in range(len(artifact.inputs)))
        program = torch.export.export(loaded.module, example)
    if program is None:
        return {}, {}
    return (trace_kernel_sources(program, import_model(program).mod, resolve_tvm_target(profile)),
            fx_module_macs(program))


def annotate_kernels(kernels: list[dict], sources: dict) -> None:
    """Add each kernel's module paths (and whether it is compilation layout work) to a report's kernel rows."""
    for k in kernels:
        source = sources.get(k["name"])
        k["modules"] = source.modules if source else []
        k["compilation_artifact"] = bool(source and source.compilation_artifact)


def kernel_where(kernel: dict) -> str:
    """'layer1.conv1, layer1.bn1' / '(compilation: layout)' / '' for a report's kernel row."""
    if "modules" not in kernel:
        return ""
    return _where({"modules": kernel["modules"], "compilation_artifact": kernel["compilation_artifact"]})


def _arg_bytes(arg) -> int:
    if not isinstance(arg, dict) or "shape" not in arg:
        return 0
    import numpy as np

    count = 1
    for d in arg["shape"]:
        count *= int(d)
    try:
        return count * np.dtype(arg["dtype"]).itemsize
    except TypeError:
        return count * 4


def _where(row) -> str:
    if row["compilation_artifact"]:
        return "(compilation: layout)"
    if not row["modules"]:
        return "(unmapped)"
    names = [m or "(model.forward)" for m in row["modules"]]
    return ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")


def _num(value, spec) -> str:
    return format(value, spec) if value is not None else format("n/a", ">" + spec.split(".")[0])


def _pct(value) -> str:
    return f"{value:>7.1%}" if value is not None else f"{'n/a':>7}"
