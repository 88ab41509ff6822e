"""Measured latency of every layer shape the search may choose, cached on disk per device.

NetAdapt's latency table, filled from per-kernel timing on the device: each conv layer of a
candidate model has a *kernel signature* (the operator and its operand shapes:
``conv2d|x1x24x14x14|w16x24x3x3|s1|p1|d1|g1``).  Signatures missing from the table are measured
together: one *probe* artifact holds one conv of each missing shape (fed by real inputs, so
nothing is constant-folded), it is compiled for the target, the device runner times each fused
kernel alone, and every kernel goes into the table.  A layer group at a candidate width is thus a
set of table rows (the layers that produce and consume those channels).

A model's latency is predicted as the sum of its conv rows plus a *residual* (everything else:
pooling, the classifier, the VM's overhead), which the search re-measures on every model it
verifies.  Whole-model measurements are cached too, keyed by the architecture's signature.

The cache file is keyed by the device's identity (``local``, ``ssh:user@board``) and the target
(with threads); every row records the device fingerprint it was measured under (board, CPU,
kernel, governor, Python, TVM runtime).  When the device's fingerprint changes (a new runtime,
another governor), old rows are *stale*: never used, re-measured and replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgekit.errors import EdgekitError

SCHEMA_VERSION = 1


class KernelTimingUnavailable(EdgekitError):
    """The device's runner gave no per-kernel timing: the search measures whole models instead."""


def default_cache_dir() -> Path:
    base = os.environ.get("EDGEKIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "edgekit")
    return Path(base).expanduser() / "latency"


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------- signatures

@dataclass(frozen=True)
class ConvSpec:
    """One conv layer's geometry at its input shape: enough to rebuild it in a probe."""

    in_ch: int
    out_ch: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    height: int
    width: int

    @property
    def signature(self) -> str:
        k, s, p, d = self.kernel, self.stride, self.padding, self.dilation
        return (f"conv2d|x1x{self.in_ch}x{self.height}x{self.width}|w{self.out_ch}x{self.in_ch // self.groups}"
                f"x{k[0]}x{k[1]}|s{s[0]}x{s[1]}|p{p[0]}x{p[1]}|d{d[0]}x{d[1]}|g{self.groups}")

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_ch, self.in_ch // self.groups, *self.kernel)

    @property
    def macs(self) -> int:
        oh = (self.height + 2 * self.padding[0] - self.dilation[0] * (self.kernel[0] - 1) - 1) // self.stride[0] + 1
        ow = (self.width + 2 * self.padding[1] - self.dilation[1] * (self.kernel[1] - 1) - 1) // self.stride[1] + 1
        return oh * ow * self.out_ch * (self.in_ch // self.groups) * self.kernel[0] * self.kernel[1]


def conv_layers(model, input_shape) -> list[tuple[str, ConvSpec]]:
    """(module name, geometry) of every Conv2d call in one forward pass at ``input_shape``."""
    import torch
    import torch.nn as nn

    found: list[tuple[str, ConvSpec]] = []
    hooks = []

    def hook(name):
        def record(mod, inputs, output):
            x = inputs[0]
            pad = mod.padding if isinstance(mod.padding, tuple) else (0, 0)
            found.append((name, ConvSpec(int(x.shape[1]), int(mod.out_channels), tuple(mod.kernel_size),
                                         tuple(mod.stride), tuple(pad), tuple(mod.dilation), int(mod.groups),
                                         int(x.shape[2]), int(x.shape[3]))))
        return record

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            hooks.append(mod.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(*input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return found


def architecture_signature(model, input_shape) -> str:
    """Same value for two models with the same layers and shapes, whatever their weights."""
    layers = [(name, type(mod).__name__, [[list(t.shape), str(t.dtype)] for t in
                                          (*mod.parameters(recurse=False), *mod.buffers(recurse=False))])
              for name, mod in model.named_modules()
              if any(True for _ in mod.parameters(recurse=False)) or any(True for _ in mod.buffers(recurse=False))]
    return "model|" + _sha({"class": type(model).__qualname__, "input": list(input_shape), "layers": layers})[:24]


# ---------------------------------------------------------------- probes

def build_probe(specs: list[ConvSpec]):
    """A module with one conv (+bias +ReLU, as the compiled model fuses them) per spec, one input per shape."""
    import torch
    import torch.nn as nn

    shapes = sorted({(s.in_ch, s.height, s.width) for s in specs})
    index = {shape: i for i, shape in enumerate(shapes)}

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList(nn.Conv2d(s.in_ch, s.out_ch, s.kernel, s.stride, s.padding, s.dilation,
                                                 s.groups, bias=True) for s in specs)
            self.inputs = [index[(s.in_ch, s.height, s.width)] for s in specs]

        def forward(self, *xs):
            return tuple(torch.relu(conv(xs[i])) for conv, i in zip(self.convs, self.inputs))

    torch.manual_seed(0)  # fixed weights: the same probe compiles to the same (cached) artifact
    return Probe().eval(), [(1, *shape) for shape in shapes]


def probe_kernel_sources(probe, artifact) -> dict:
    """The cost card's kernel-to-module mapping of a probe artifact (edgekit.measure.kernel_sources); empty where
    it cannot be traced (a profile not found by name, a trace the mapping cannot follow: shapes still work)."""
    try:
        from edgekit.measure.cost_card import kernel_sources_for
        from edgekit.targets import load_target

        return kernel_sources_for(probe, load_target(artifact.target_name), artifact)[0]
    except Exception:  # noqa: BLE001
        return {}


def kernels_by_module(kernels: list[dict], sources: dict) -> dict[str, dict]:
    """The probe's timed kernels by the conv module they were fused from (``convs.3``), from the cost card's
    kernel-to-module mapping (``probe_kernel_sources``), so the table and ``edgekit profile`` agree on which
    kernel is which layer.  Empty where the mapping cannot be traced; the caller then matches by shapes.

    A conv that runs as several kernels (a Winograd conv: input transform, GEMM, output transform) gets their
    sum; a kernel two convs share (the input transform of two convs reading one shape) counts once for each.
    """
    parts: dict[str, list[dict]] = {}
    for k in kernels:
        for module in dict.fromkeys(m for m in getattr(sources.get(k["name"]), "modules", []) if m.startswith("convs.")):
            parts.setdefault(module, []).append(k)
    return {module: ks[0] if len(ks) == 1 else _summed(ks) for module, ks in parts.items()}


def _summed(kernels: list[dict]) -> dict:
    """One layer's kernels as one entry: per-call medians and samples added (samples pair up by index)."""
    samples = [sum(values) for values in zip(*(sorted(k["samples_ms"]) for k in kernels))]
    return {"name": "+".join(k["name"] for k in kernels), "median_ms": sum(k["median_ms"] for k in kernels),
            "samples_ms": samples, "calls": 1}


def _kernel_key(data_shape, weight_shape, out_shape) -> str:
    return f"{list(data_shape)}|{list(weight_shape)}|{list(out_shape)}"


# ---------------------------------------------------------------- the table

class LatencyTable:
    """The on-disk cache for one device and target; see the module docstring."""

    def __init__(self, path: Path, *, identity: str, target: str, threads: int, schedules: str | None = None):
        self.path = Path(path)
        self.identity, self.target, self.threads = identity, target, threads
        # What builds for the target get today (edgekit.compile.tuning_db.schedule_state): a row measured
        # before `edgekit tune` ran, or before the default schedules changed, is not what a deploy ships.
        self.schedules = schedules
        self.entries: dict[str, dict[str, Any]] = {}
        self.fingerprint: dict[str, Any] | None = None  # the device as last seen (from the file, then live)
        self.live = False  # True once a measurement in this session confirmed the fingerprint
        self.stats = {"hits": 0, "measured": 0, "stale": 0, "probes": 0}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError):
                data = {}  # a damaged cache is only a cache: start over
            if data.get("schema_version") == SCHEMA_VERSION:
                self.entries = data.get("entries", {})
                self.fingerprint = data.get("fingerprint")

    @classmethod
    def open(cls, *, identity: str, target: str, threads: int, cache_dir: Path | str | None = None,
             schedules: str | None = None) -> "LatencyTable":
        key = _sha({"identity": identity, "target": target, "threads": threads})[:20]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{target}-{identity}")[:60]
        return cls(Path(cache_dir or default_cache_dir()) / f"{safe}-{key}.json", identity=identity, target=target,
                   threads=threads, schedules=schedules)

    @property
    def fingerprint_sha(self) -> str | None:
        return _sha(self.fingerprint)[:16] if self.fingerprint is not None else None

    def observe(self, device_fingerprint: dict[str, Any]) -> int:
        """The device as measured now; returns how many cached rows this makes stale."""
        from edgekit.optimize.devices import stable_fingerprint

        self.fingerprint = stable_fingerprint(device_fingerprint)
        self.live = True
        stale = sum(1 for e in self.entries.values() if self.is_stale(e))
        self.stats["stale"] = stale
        return stale

    def is_stale(self, entry: dict[str, Any]) -> bool:
        return entry.get("fingerprint_sha") != self.fingerprint_sha or entry.get("schedules") != self.schedules

    def get(self, key: str) -> dict[str, Any] | None:
        entry = self.entries.get(key)
        if entry is None or self.is_stale(entry):
            return None
        return entry

    def put(self, key: str, entry: dict[str, Any]) -> None:
        self.entries[key] = {**entry, "fingerprint_sha": self.fingerprint_sha, "schedules": self.schedules,
                             "tvm": (self.fingerprint or {}).get("tvm"),
                             "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.stats["measured"] += 1

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"schema_version": SCHEMA_VERSION, "identity": self.identity, "target": self.target,
                "threads": self.threads, "fingerprint": self.fingerprint, "fingerprint_sha": self.fingerprint_sha,
                "entries": self.entries}
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)  # a kill mid-write leaves the previous table, never half of one

    # -- kernels ------------------------------------------------------------------------------------------

    def missing(self, specs: list[ConvSpec]) -> list[ConvSpec]:
        seen, out = set(), []
        for s in specs:
            if s.signature not in seen and self.get(s.signature) is None:
                seen.add(s.signature)
                out.append(s)
        return out

    def fill(self, specs: list[ConvSpec], *, compile_fn: Callable, measure_fn: Callable,
             chunk: int = 48) -> int:
        """Measure every spec the table lacks (probe artifacts, per-kernel timing); returns how many."""
        import concurrent.futures

        todo = self.missing(specs)
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            probe, shapes = build_probe(part)
            artifact = compile_fn(probe, shapes)
            # The mapping is host work that needs only the probe and its artifact: traced while the device
            # measures (this thread only waits on it), not after.
            with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="probe-sources") as tracer:
                sources = tracer.submit(probe_kernel_sources, probe, artifact)
                report = measure_fn(artifact, kernels=True)
                sources = sources.result()
            if not report.kernels:
                raise KernelTimingUnavailable("the device's runner reports no per-kernel timing")
            self.stats["probes"] += 1
            by_module = kernels_by_module(report.kernels, sources)  # the cost card's mapping
            by_shape = {}
            for k in report.kernels:
                shapes_k = [a["shape"] for a in k.get("args", []) if isinstance(a, dict)]
                if len(shapes_k) >= 3 and "conv" in k["name"]:
                    by_shape.setdefault(_kernel_key(shapes_k[0], shapes_k[1], shapes_k[-1]), k)
                    by_shape.setdefault(_kernel_key(*(sorted(x) for x in (shapes_k[0], shapes_k[1], shapes_k[-1]))), k)
            import torch

            for i, (spec, conv) in enumerate(zip(part, probe.convs)):
                n, o, oh, ow = conv(torch.zeros(1, spec.in_ch, spec.height, spec.width)).shape
                c, h, w = spec.in_ch, spec.height, spec.width
                wo, wi, kh, kw = spec.weight_shape
                layouts = [([1, c, h, w], [wo, wi, kh, kw], [n, o, oh, ow]),  # NCHW / OIHW
                           ([1, h, w, c], [kh, kw, wi, wo], [n, oh, ow, o]),  # NHWC / HWIO (edgekit's CPU layout)
                           ([1, h, w, c], [wo, kh, kw, wi], [n, oh, ow, o])]  # NHWC / OHWI
                keys = [_kernel_key(*lay) for lay in layouts] + [_kernel_key(*(sorted(x) for x in layouts[0]))]
                kernel = by_module.get(f"convs.{i}") or next((by_shape[k] for k in keys if k in by_shape), None)
                if kernel is None:
                    raise EdgekitError(f"the device's per-kernel timing has no kernel for {spec.signature}",
                                       hint="measure whole models instead (table_mode='whole')")
                samples = sorted(kernel["samples_ms"])
                self.put(spec.signature, {"source": "kernel", "kernel": kernel["name"],
                                          "matched_by": "module" if by_module.get(f"convs.{i}") else "shape",
                                          "median_ms": kernel["median_ms"],
                                          "p90_ms": samples[min(len(samples) - 1, int(0.9 * len(samples)))],
                                          "samples_ms": kernel["samples_ms"], "probe": artifact.artifact_id})
            self.save()
        return len(todo)

    def layer_ms(self, spec: ConvSpec, metric: str = "median") -> float:
        entry = self.get(spec.signature)
        if entry is None:
            raise KeyError(spec.signature)
        self.stats["hits"] += 1
        return float(entry["p90_ms" if metric == "p90" else "median_ms"])

    def layer_rows(self, layers: list[tuple[str, ConvSpec]], metric: str = "median") -> list[dict[str, Any]]:
        """A model's conv layers by module path (as the cost card names them), slowest first, with the table's
        latency for each and the probe kernel that timed it."""
        rows = []
        for name, spec in layers:
            entry = self.get(spec.signature) or {}
            rows.append({"module": name, "signature": spec.signature, "kernel": entry.get("kernel"),
                         "latency_ms": entry.get("p90_ms" if metric == "p90" else "median_ms")})
        return sorted(rows, key=lambda r: -(r["latency_ms"] or 0.0))

    def conv_sum_ms(self, layers: list[tuple[str, ConvSpec]], metric: str = "median") -> float:
        return sum(self.layer_ms(spec, metric) for _, spec in layers)

    def per_layer_ms(self, layers: list[tuple[str, ConvSpec]], metric: str = "median") -> dict[str, float]:
        out: dict[str, float] = {}
        for name, spec in layers:
            out[name] = out.get(name, 0.0) + self.layer_ms(spec, metric)
        return out
