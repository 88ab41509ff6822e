"""The search's report: JSON for scripts, markdown for people, and one plot to read at a glance.

The plot shows accuracy against latency for every candidate the search evaluated: filled markers
were measured on the device, hollow ones are predictions from the latency table (proposals that
were not chosen), the line joins the Pareto front, arrows follow the path taken, the dashed line is
the budget and the star is the chosen model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def pareto_front(points: list[dict[str, Any]], *, x: str = "latency_ms", y: str = "val_accuracy") -> list[dict]:
    """Points no other point beats on both lower ``x`` and higher ``y``, sorted by ``x``."""
    ordered = sorted((p for p in points if p.get(x) is not None and p.get(y) is not None),
                     key=lambda p: (p[x], -p[y]))
    front, best_y = [], float("-inf")
    for p in ordered:
        if p[y] > best_y:
            front.append(p)
            best_y = p[y]
    return front


def write_reports(result, run_dir: Path | str, *, extra_points: list[dict[str, Any]] | None = None,
                  title: str | None = None) -> dict[str, str]:
    """report.json, report.md and pareto.png in ``run_dir``; returns their paths."""
    run_dir = Path(run_dir)
    data = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    data["pareto_front"] = [p["id"] for p in pareto_front(data["candidates"])]
    paths = {"json": str(run_dir / "report.json"), "markdown": str(run_dir / "report.md"),
             "plot": str(run_dir / "pareto.png")}
    data["reports"] = paths
    Path(paths["json"]).write_text(json.dumps(data, indent=2, default=str) + "\n")
    Path(paths["markdown"]).write_text(markdown(data))
    plot(data, Path(paths["plot"]), extra_points=extra_points, title=title)
    return paths


def _label(data) -> str:
    return ("PREDICTED latency (proxy mode: cached latency table, no device)" if data["proxy"]
            else "latency MEASURED on the device")


def markdown(data: dict[str, Any]) -> str:
    b, ch, base = data["budget"], data["chosen"], data["baseline"]
    metric = b["metric"]
    lines = [f"# edgekit optimize: {'budget met' if data['met'] else 'BUDGET NOT MET'}", "",
             f"*{_label(data)}* -- device: `{data['device'].get('identity', data['device'].get('kind'))}`, "
             f"target `{b['target']}`", ""]
    budget = []
    if b["latency_ms"] is not None:
        budget.append(f"latency {metric} <= {b['latency_ms']:.3f} ms")
    if b["size_bytes"] is not None:
        budget.append(f"size <= {b['size_bytes']} bytes")
    if b["accuracy_floor"] is not None:
        budget.append(f"accuracy >= {b['accuracy_floor']:.4f}")
    lines += [f"Budget: {', '.join(budget)}.", "", data.get("message", ""), "",
              "| | latency (ms, " + metric + ") | size (bytes) | val accuracy | test accuracy |",
              "|---|---:|---:|---:|---:|",
              f"| baseline | {base['latency_ms']:.3f} | {base['size_bytes']} | {base['val_accuracy']:.4f} | "
              f"{base.get('test_accuracy', float('nan')):.4f} |",
              f"| {'chosen' if data['met'] else 'closest'} ({ch['id']}) | {ch['latency_ms']:.3f} | {ch['size_bytes']} | "
              f"{ch['val_accuracy']:.4f} | {ch.get('test_accuracy', float('nan')):.4f} |", ""]
    lines += ["## Per-layer widths (channels per layer group)", "", "| group | baseline | chosen |", "|---|---:|---:|"]
    for name, w0 in base["widths"].items():
        lines.append(f"| `{name}` | {w0} | {ch['widths'].get(name, w0)} |")
    layer_rows = [r for r in base.get("layer_latency", []) if r.get("latency_ms") is not None]
    if layer_rows:
        lines += ["", f"## Per-layer latency at baseline (device, per kernel, {metric})", "",
                  "| module | ms | conv |", "|---|---:|---|"]
        lines += [f"| `{r['module']}` | {r['latency_ms']:.4f} | `{r['signature'].replace('|', ' ')}` |"
                  for r in layer_rows]
    lines += ["", "## Path taken", "",
              "| iteration | group | width | predicted ms | verified ms | source | val accuracy |",
              "|---:|---|---|---:|---:|---|---:|"]
    for s in data["steps"]:
        lines.append(f"| {s['iteration']} | `{s['group']}` | {s['from_width']} -> {s['to_width']} | "
                     f"{s['predicted_latency_ms']:.3f} | {s['latency_ms']:.3f} | {s['latency_source']} | "
                     f"{s['val_accuracy']:.4f} |")
    front = set(data.get("pareto_front", []))
    lines += ["", f"## Candidates ({len(data['candidates'])} evaluated; * = on the Pareto front)", "",
              "| id | latency ms | source | val accuracy |", "|---|---:|---|---:|"]
    for c in data["candidates"]:
        lines.append(f"| {c['id']}{' *' if c['id'] in front else ''} | {c['latency_ms']:.3f} | "
                     f"{c['latency_source']} | {c['val_accuracy']:.4f} |")
    t = data.get("table") or {}
    if t:
        lines += ["", f"Latency table `{t.get('path')}`: {t.get('entries')} entries, {t.get('measured')} measured "
                  f"in this run ({t.get('probes')} probe artifacts), {t.get('hits')} lookups, {t.get('stale')} stale."]
    lines += ["", "![accuracy vs latency](pareto.png)", ""]
    return "\n".join(lines)


def plot(data: dict[str, Any], path: Path, *, extra_points: list[dict[str, Any]] | None = None,
         title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    cands = data["candidates"]
    measured = [c for c in cands if not str(c.get("latency_source", "")).startswith("predicted")]
    predicted = [c for c in cands if str(c.get("latency_source", "")).startswith("predicted")]
    if predicted:
        ax.scatter([c["latency_ms"] for c in predicted], [c["val_accuracy"] for c in predicted], s=28,
                   facecolors="none", edgecolors="tab:gray", label="proposal (latency predicted from table)")
    if measured:
        ax.scatter([c["latency_ms"] for c in measured], [c["val_accuracy"] for c in measured], s=36,
                   color="tab:blue", label="verified on the device" if not data["proxy"] else "verified (proxy)")
    front = pareto_front(cands)
    ax.plot([p["latency_ms"] for p in front], [p["val_accuracy"] for p in front], color="tab:blue", alpha=0.4,
            lw=1.5, label="Pareto front")
    path_points = [c for c in cands if c.get("kind") in ("baseline", "final") or c.get("chosen")]
    path_points.sort(key=lambda c: (c["iteration"], c.get("kind") == "final"))
    for a, b in zip(path_points, path_points[1:]):
        ax.annotate("", xy=(b["latency_ms"], b["val_accuracy"]), xytext=(a["latency_ms"], a["val_accuracy"]),
                    arrowprops={"arrowstyle": "->", "color": "tab:orange", "lw": 1.2})
    ch = data["chosen"]
    ax.scatter([ch["latency_ms"]], [ch["val_accuracy"]], marker="*", s=260, color="tab:red", zorder=5,
               label=f"{'chosen' if data['met'] else 'closest'}: {ch['latency_ms']:.2f} ms, acc {ch['val_accuracy']:.3f}")
    for p in extra_points or []:
        ax.scatter([p["latency_ms"]], [p["val_accuracy"]], marker=p.get("marker", "s"), s=70,
                   color=p.get("color", "tab:green"), zorder=4, label=p["label"])
    if data["budget"]["latency_ms"] is not None:
        ax.axvline(data["budget"]["latency_ms"], ls="--", color="tab:red", alpha=0.7,
                   label=f"budget {data['budget']['latency_ms']:.2f} ms")
    ax.set_xlabel(f"latency, {data['budget']['metric']} (ms) -- "
                  + ("PREDICTED, proxy mode" if data["proxy"] else "measured on the device"))
    ax.set_ylabel("accuracy (held-out validation)")
    ax.set_title(title or f"edgekit optimize: {'budget met' if data['met'] else 'budget NOT met'}"
                 + (" [PROXY: no device]" if data["proxy"] else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
