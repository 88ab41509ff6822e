"""Latency, measured or predicted: the device, the latency table and the proxy, behind one object.

``LatencyOracle.measure_model`` gives a model's whole-model latency (measured on the device, cached per
architecture, or predicted in proxy mode); ``predict`` gives a proposal's latency from the latency table
(each conv kernel timed alone on the device) plus the residual re-measured on every verified model;
``device_measure`` is one measurement of an artifact, the least-disturbed of several rounds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgekit.artifacts import LatencyReport
from edgekit.errors import UsageError



# What a whole-model measurement carries beside its median and p90, into the table, the state and the candidates:
# the median's interval (the round kept), the run's peak resident memory on the device, and the artifact's own
# memory (constants + workspace, from its manifest; None for artifacts compiled before it was recorded).
MEASURED_EXTRAS = ("median_ci_low_ms", "median_ci_high_ms", "ci_half_width_ratio", "peak_rss_bytes",
                   "model_memory_bytes")


def measured_extras(report: LatencyReport, artifact) -> dict[str, Any]:
    memory = (artifact.manifest.get("memory") or {})
    return {"median_ci_low_ms": report.stats.get("median_ci_low_ms"),
            "median_ci_high_ms": report.stats.get("median_ci_high_ms"),
            "ci_half_width_ratio": report.stats.get("ci_half_width_ratio"),
            "peak_rss_bytes": (report.memory or {}).get("peak_rss_bytes"),
            "model_memory_bytes": memory.get("model_memory_bytes")}  # None when not recorded (or it failed)

class LatencyOracle:
    def __init__(self, state, config, device, *, proxy: bool, input_shape, reference_input, cache_dir,
                 artifacts_dir, say, on_event):
        from edgekit.optimize.latency_table import LatencyTable

        self.state, self.config, self.device, self.proxy = state, config, device, proxy
        self.input_shape = tuple(input_shape)
        self.reference_input = reference_input  # a real example: int8 models are checked on real data
        self.say = say
        # shared between runs, compiled artifacts are reused (content-addressed); default: inside the run dir
        self.artifacts_dir = Path(artifacts_dir) if artifacts_dir else state.artifacts_dir
        self.on_event = on_event or (lambda kind, payload: None)
        setup = state.config["setup"]
        identity = setup["device"].get("identity", "local") if not proxy else (
            f"ssh:{setup['host']}" if setup.get("host") else "local")
        self.table = LatencyTable.open(identity=identity, target=config.target, threads=setup.get("threads", 1),
                                       cache_dir=cache_dir, schedules=_schedule_state(config.target))
        self._compiled: dict[str, Any] = {}  # _model_digest -> artifact, for this search
        if hasattr(device, "prepare") and not proxy:
            device.prepare(config.measure_rounds)  # e.g. a pool's worker processes start while the host compiles

    def check_device(self, model) -> int:
        """One short run of ``model``: the device's fingerprint; returns how many cached entries it made stale."""
        artifact = self.compile(model)
        report = self.device.measure(artifact, warmup=1, repeats=3)
        return self.table.observe(report.device)

    @property
    def mode(self) -> str:
        """kernels (the latency table) or whole (every proposal measured whole: the device has no kernel timing)."""
        return self.state.data.get("table_mode") or self.config.table_mode

    def fill(self, specs) -> int | None:
        """Measure the table's missing kernels; None (and whole-model mode from now on) without kernel timing."""
        from edgekit.optimize.latency_table import KernelTimingUnavailable

        try:
            return self.table.fill(specs, compile_fn=self.compile, measure_fn=self.device_measure)
        except KernelTimingUnavailable as exc:
            self.state["table_mode"] = "whole"
            self.state.save()
            self.say(f"{exc}: measuring every proposal as a whole model instead (slower, same decisions)")
            return None

    def emit(self, kind: str, **payload):
        self.on_event(kind, payload)

    def compile(self, model, shapes=None):
        """The model's artifact; one the search compiled before (same structure, same weights) is not exported
        again (e.g. the device check and the baseline measurement, or a final model no iteration changed)."""
        key = _model_digest(model, shapes or [self.input_shape])
        if key not in self._compiled:
            self._compiled[key] = self._compile(model, shapes)
        return self._compiled[key]

    def _compile(self, model, shapes=None):
        from edgekit.compile import compile_model
        from edgekit.compress.quantize import INT8_CHECK_TOLERANCE
        from edgekit.optimize.quantize_choice import quantized_layer_names

        extra = {}
        if quantized_layer_names(model):
            # int8 activations round at .5 boundaries: a real image and a looser tolerance keep the check meaningful
            extra = {"reference_inputs": [self.reference_input], "tolerance": dict(INT8_CHECK_TOLERANCE)}
        return compile_model(model, self.config.target, input_shapes=shapes or [self.input_shape],
                             out_dir=self.artifacts_dir, **extra)

    def device_measure(self, artifact, *, kernels=False):
        """``measure_rounds`` separate runs on the device; the least-disturbed one (lowest median) is kept.

        On a shared host other processes can only add time, so the round they disturbed least is the best
        estimate of the device's own latency; on a dedicated board the rounds agree and this changes nothing.
        Every round's median is recorded.  Per-kernel times: each kernel's lowest median over the rounds.
        """
        settings = dict(kernels=kernels, warmup=self.config.warmup, repeats=self.config.repeats,
                        kernel_repeats=self.config.kernel_repeats)
        if hasattr(self.device, "measure_rounds"):  # a board pool: the rounds at once, on several identical boards
            reports = self.device.measure_rounds(artifact, max(1, self.config.measure_rounds), **settings)
        else:
            reports = [self.device.measure(artifact, **settings) for _ in range(max(1, self.config.measure_rounds))]
        report = min(reports, key=lambda r: r.stats["median_ms"])
        report.stats["round_medians_ms"] = [r.stats["median_ms"] for r in reports]
        if hasattr(self.device, "measure_rounds"):
            report.stats["round_units"] = [r.device.get("pool_unit") for r in reports]  # which board measured each
        if kernels and len(reports) > 1:
            best: dict[str, dict] = {}
            for r in reports:
                for k in r.kernels:
                    key = json.dumps([k["name"], k.get("args")], sort_keys=True, default=str)
                    if key not in best or k["median_ms"] < best[key]["median_ms"]:
                        best[key] = k
            report = LatencyReport.from_dict({**report.to_dict(), "kernels": list(best.values())})
        self.table.observe(report.device)
        self.emit("measured", artifact_id=artifact.artifact_id, kernels=kernels,
                  median_ms=report.stats.get("median_ms"))
        return report

    def metric_ms(self, stats: dict) -> float:
        return float(stats["p90_ms" if self.config.metric == "p90" else "median_ms"])

    def measure_model(self, model, *, fresh: bool = False) -> dict[str, Any]:
        """Whole-model latency on the device (cached per architecture unless ``fresh``); proxy: predicted."""
        from edgekit.optimize.latency_table import architecture_signature, conv_layers

        arch = architecture_signature(model, self.input_shape)
        if self.proxy:
            cached = self.table.get(arch)
            if cached is not None:
                return {"arch": arch, "latency_ms": self.metric_ms(cached), "median_ms": cached["median_ms"],
                        "p90_ms": cached["p90_ms"], "size_bytes": cached["size_bytes"],
                        "source": "predicted (proxy: cached measurement)", "artifact_id": cached.get("artifact_id")}
            layers = conv_layers(model, self.input_shape)
            self.require_table(layers)
            predicted = self.table.conv_sum_ms(layers, self.config.metric) + self.state["proxy_residual_ms"]
            return {"arch": arch, "latency_ms": predicted, "median_ms": predicted, "p90_ms": predicted,
                    "size_bytes": param_bytes(model) + self.state["proxy_size_overhead"], "source": "predicted",
                    "artifact_id": None}
        cached = self.table.get(arch) if (self.config.reuse_measurements and not fresh) else None
        if cached is not None and self.config.memory_budget_mb is not None and cached.get("model_memory_bytes") is None:
            cached = None  # measured before artifacts recorded their memory: the budget needs it, so measure again
        if cached is not None:
            self.table.stats["hits"] += 1
            return {"arch": arch, "latency_ms": self.metric_ms(cached), "median_ms": cached["median_ms"],
                    "p90_ms": cached["p90_ms"], "size_bytes": cached["size_bytes"], "source": "measured (cached)",
                    "artifact_id": cached.get("artifact_id"), **{k: cached.get(k) for k in MEASURED_EXTRAS}}
        artifact = self.compile(model)
        report = self.device_measure(artifact)
        entry = {"source": "model", "median_ms": report.stats["median_ms"], "p90_ms": report.stats["p90_ms"],
                 "round_medians_ms": report.stats.get("round_medians_ms"),
                 **{k: report.stats[k] for k in ("round_units", "unit_spread") if k in report.stats},  # pool
                 "samples_ms": report.samples_ms, "size_bytes": artifact.size_bytes,
                 "artifact_id": artifact.artifact_id, **measured_extras(report, artifact)}
        if self.config.memory_budget_mb is not None and entry["model_memory_bytes"] is None:
            from edgekit.errors import ArtifactError

            raise ArtifactError(f"artifact {artifact.path} was compiled before artifacts recorded their memory, "
                                "and the memory budget needs it", hint="delete it (or its --artifacts-dir) to rebuild")
        if not fresh or self.table.get(arch) is None:
            # a fresh re-measurement (the final check) never replaces the number earlier decisions were made on,
            # so that a resumed or repeated search sees exactly what the first one saw
            self.table.put(arch, entry)
            self.table.save()
        return {"arch": arch, "latency_ms": self.metric_ms(entry), "median_ms": entry["median_ms"],
                "p90_ms": entry["p90_ms"], "size_bytes": entry["size_bytes"], "source": "measured",
                "round_medians_ms": entry["round_medians_ms"],
                "artifact_id": artifact.artifact_id, "device": report.device,
                **{k: entry.get(k) for k in MEASURED_EXTRAS}}

    def require_table(self, layers):
        missing = self.table.missing([spec for _, spec in layers])
        if missing:
            raise UsageError(f"proxy mode: the cached latency table {self.table.path} lacks {len(missing)} kernel "
                             f"signature(s), e.g. {missing[0].signature}",
                             hint="run the search once against the device (without --proxy) to fill the table")

    def prepare_proxy(self, model):
        """Proxy mode: no device; the residual comes from a cached whole-model measurement of the start model."""
        from edgekit.optimize.latency_table import architecture_signature

        layers = self.layers(model)
        self.require_table(layers)
        arch = self.table.get(architecture_signature(model, self.input_shape)) if self.table.fingerprint else None
        if arch is None:
            self.state["proxy_residual_ms"] = 0.0
            self.say("proxy mode: no cached whole-model measurement of the start model; residual taken as 0 ms")
        else:
            self.state["proxy_residual_ms"] = self.metric_ms(arch) - self.table.conv_sum_ms(layers, self.config.metric)
        self.state["proxy_size_overhead"] = (arch["size_bytes"] - param_bytes(model)) if arch else 0

    def layers(self, model):
        from edgekit.optimize.latency_table import conv_layers

        if self.mode != "kernels":
            return None
        layers = conv_layers(model, self.input_shape)
        if not self.proxy and self.fill([spec for _, spec in layers]) is None:
            return None
        return layers

    def conv_sum(self, layers) -> float:
        return self.table.conv_sum_ms(layers, self.config.metric)

    def predict(self, model, current, current_param_bytes: int) -> dict[str, Any]:
        if self.mode == "whole":
            measured = self.measure_model(model)
            return {**measured, "source": "measured (whole model)"}
        from edgekit.optimize.latency_table import conv_layers

        layers = conv_layers(model, self.input_shape)
        latency = self.conv_sum(layers) + current["residual_ms"]
        removed = current_param_bytes - param_bytes(model)
        size = current["size_bytes"] - removed
        # pruned weights leave the constants; the workspace is taken as unchanged (verified on the device)
        memory = current.get("model_memory_bytes")
        return {"latency_ms": latency, "size_bytes": int(size),
                "model_memory_bytes": None if memory is None else int(memory - removed),
                "source": "predicted (latency table)" if not self.proxy else "predicted (proxy)"}

    def table_info(self):
        return {"path": str(self.table.path), "fingerprint": self.table.fingerprint, **self.table.stats,
                "entries": len(self.table.entries), "mode": self.mode}


def _model_digest(model, shapes) -> str:
    """Structure (the module tree's repr), every parameter and buffer, and the input shapes, as one sha256."""
    import hashlib

    from edgekit.compress.distributed import state_fingerprint

    return hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}\n{model!r}\n{shapes}\n"
                          f"{state_fingerprint(model)}".encode()).hexdigest()


def param_bytes(model) -> int:
    """float32 weights: the part of an artifact's size that pruning changes."""
    return 4 * int(sum(p.numel() for p in model.parameters()))


def _schedule_state(target: str) -> str:
    """The schedules builds for ``target`` get now (default rules + tuning records), for the table's rows."""
    from edgekit.compile.build import resolve_tvm_target
    from edgekit.compile.tuning_db import schedule_state
    from edgekit.targets import load_target

    profile = load_target(target)
    return schedule_state(profile, resolve_tvm_target(profile))
