"""The closed loop: measured on-device latency chooses which layer to shrink, step by step (NetAdapt).

Each iteration, with ``L`` the current model's latency *measured on the device*:

1. the iteration's target is ``L - step`` (``step`` = ``step_ratio`` x the baseline's latency; never
   below the budget minus a small margin);
2. for every prunable layer group (channels that must be removed together, from the compress
   stage's dependency graph), the *smallest* pruning step whose predicted latency meets the target:
   the prediction is the latency table (each conv layer's kernel, timed alone on the device) plus
   a residual re-measured on every verified model -- no FLOPs or parameter counts;
3. each proposal is pruned (L1 channel importance), distilled briefly from the starting model
   (seeded), and scored on held-out data; the most accurate one wins;
4. the winner is compiled for the target and its whole-model latency is measured on the device;
   that measurement is the next iteration's ``L``.

It stops when the budget (latency median or p90, size) holds, when no group can shrink any
more, or when accuracy would fall below the floor; the chosen model is then distilled longer and
measured again on the device.  Every step is saved in a run directory (``state.py``) and an
interrupted search resumes where it stopped, with the same seeds and the same measurements.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgekit.artifacts import LatencyReport
from edgekit.errors import BudgetNotMetError, DataError, EdgekitError, UsageError
from edgekit.optimize.config import METRICS, SearchConfig  # noqa: F401 - re-exported

@dataclass(kw_only=True)
class OptimizeResult:
    """What the search found; ``met`` says whether the budget holds on the device."""

    met: bool
    status: str  # done | budget_not_met
    proxy: bool  # latency predicted from the cached table, never measured on a device
    run_dir: Path
    chosen: dict[str, Any]  # the chosen model (or, when not met, the closest candidate)
    baseline: dict[str, Any]
    steps: list[dict[str, Any]]
    candidates: list[dict[str, Any]]
    budget: dict[str, Any]
    device: dict[str, Any]
    table: dict[str, Any]
    model_path: Path | None = None
    reports: dict[str, str] = field(default_factory=dict)
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"met": self.met, "status": self.status, "proxy": self.proxy,
                "latency_source": "predicted from the cached latency table (proxy mode, no device)" if self.proxy
                else "measured on the device",
                "run_dir": str(self.run_dir), "model_path": str(self.model_path) if self.model_path else None,
                "budget": self.budget, "device": self.device, "baseline": self.baseline, "chosen": self.chosen,
                "steps": self.steps, "candidates": self.candidates, "table": self.table, "reports": self.reports,
                "message": self.message}

    def raise_if_not_met(self) -> "OptimizeResult":
        if not self.met:
            raise BudgetNotMetError(self.message)
        return self


# ---------------------------------------------------------------- the public verb

def optimize_model(model=None, data="fashion-mnist", *, latency_budget_ms: float | None = None,
                   metric: str = "median", size_budget_bytes: int | None = None,
                   accuracy_floor: float | None = None, target: str = "host", host: str | None = None,
                   device=None, run_dir: str | Path | None = None, resume: bool = False, proxy: bool = False,
                   cache_dir: str | Path | None = None, artifacts_dir: str | Path | None = None,
                   connect: dict | None = None, threads: int = 1,
                   log: Callable[[str], None] | None = None, on_event: Callable[[str, dict], None] | None = None,
                   write_reports: bool = True, **options) -> OptimizeResult:
    """Find the pruned model with the best accuracy whose latency, measured on the device, meets the budget.

    ``model``: an ``nn.Module``, ``"zoo:NAME"``, a ``.pt`` file of a whole module, or ``module:factory``.
    ``data``: ``"fashion-mnist"``, ``"digits"`` or a ``(train, test)`` pair of ``edgekit.data.Dataset``.
    The device: ``device`` (a ``feedback.devices.Device``), else ``host`` (``user@board[:port]`` over
    SSH), else this machine.  ``proxy``: no device; latency predicted from the cached table.
    ``resume``: continue the search in ``run_dir`` (its saved config wins; ``model`` may be None).
    ``options``: any ``SearchConfig`` field (step_ratio, finetune_epochs, seed, ...).

    Returns an ``OptimizeResult``; ``result.met`` is False (and ``result.chosen`` the closest
    candidate) when the budget cannot be met.  Device failures raise the deploy stage's
    ``DeviceError``s after the state is saved: ``resume=True`` continues from there.
    """
    import tempfile

    from edgekit.optimize.state import RunState

    say = log or (lambda message: None)
    if resume:
        if run_dir is None:
            raise UsageError("resume needs the run directory", hint="edgekit optimize --resume RUN_DIR")
        state = RunState.load(run_dir)
        if state["status"] in ("done", "budget_not_met") and state["result"]:
            say(f"{run_dir}: the search already finished ({state['status']}); nothing to resume")
            return _result_from_state(state)
        config = SearchConfig.from_dict(state.config["search"])
        setup = state.config["setup"]
        proxy = setup["proxy"]
        if data is None or isinstance(data, str):
            if setup["data"] == "custom":
                raise UsageError(f"{run_dir} was searched with data given through the API; pass the same data again")
            data = setup["data"]
        data = _resolve_data(data, config)
        if device is None and not proxy:
            device = _make_device(setup.get("host"), connect or setup.get("connect"), setup.get("threads", threads))
        cache_dir = cache_dir or setup.get("cache_dir")
        artifacts_dir = artifacts_dir or setup.get("artifacts_dir")
        teacher = state.load_model(state.teacher_path)
        input_shape = tuple(setup["input_shape"])
        before = state.data.pop("status_before", "running")
        state["status"] = before if before in ("met", "exhausted", "floor", "impossible") else "running"
        state["error"] = None
        state.event("resumed")
        state.save()
    else:
        config = SearchConfig(latency_budget_ms=latency_budget_ms, metric=metric,
                              size_budget_bytes=size_budget_bytes, accuracy_floor=accuracy_floor, target=target,
                              **options)
        from edgekit.targets import load_target

        load_target(config.target)  # an unknown target fails before any work
        data_name = data if isinstance(data, str) else None
        data = _resolve_data(data, config)
        model, model_source = _resolve_model(model)
        input_shape = (1, *data[0].input_shape)
        if device is None and not proxy:
            device = _make_device(host, connect, threads)
        run_dir = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="edgekit-optimize-"))
        setup = {"model": model_source, "data": data_name or "custom", "host": host, "proxy": proxy,
                 "threads": threads, "input_shape": list(input_shape),
                 "cache_dir": str(cache_dir) if cache_dir else None,
                 "artifacts_dir": str(artifacts_dir) if artifacts_dir else None,
                 "connect": {k: list(v) if isinstance(v, tuple) else v for k, v in (connect or {}).items()},
                 "device": device.describe() if device is not None else {"kind": "proxy"}}
        state = RunState.create(run_dir, {"search": config.to_dict(), "setup": setup})
        teacher = copy.deepcopy(model).eval()
        state.save_model(teacher, state.teacher_path)
        state.save_model(model, state.checkpoint_path(0))
    search = _Search(state, config, data, teacher, input_shape, device, proxy=proxy, cache_dir=cache_dir,
                     artifacts_dir=artifacts_dir, say=say, on_event=on_event)
    try:
        result = search.run()
    except BaseException as exc:
        if state["status"] != "interrupted":
            state["status_before"] = state["status"]  # a stop decision already taken survives the interruption
        state["status"] = "interrupted"
        state["error"] = {"type": type(exc).__name__, "message": str(exc)[:2000],
                          "exit_code": getattr(exc, "exit_code", 130 if isinstance(exc, KeyboardInterrupt) else 1)}
        state.event("interrupted", error=type(exc).__name__)
        state.save()
        if isinstance(exc, EdgekitError) and not isinstance(exc, UsageError):
            exc.args = (f"{exc}\n  the search state is kept in {state.run_dir}; continue with "
                        f"`edgekit optimize --resume {state.run_dir}`",)
        raise
    finally:
        if device is not None:
            device.close()
    if write_reports:
        from edgekit.optimize.report import write_reports as _write

        result.reports = _write(result, state.run_dir)
        state["result"] = result.to_dict()
        state.save()
    return result


def _make_device(host, connect, threads):
    from edgekit.optimize.devices import LocalDevice, SshDevice

    if host:
        return SshDevice(host, connect=connect, threads=threads)
    return LocalDevice(threads=threads)


def _resolve_model(model):
    """(nn.Module, how to name it in the run's setup); any torch form ``edgekit.models`` accepts."""
    from edgekit.models import load_model

    if model is None:
        raise UsageError("no model given", hint="pass zoo:fmnist-resnet, a .pt file of a whole module, or module:factory")
    loaded = load_model(model)
    module = loaded.torch_module(purpose="optimize")
    return (copy.deepcopy(module).eval() if loaded.form == "module" else module), loaded.source


def _resolve_data(data, config: SearchConfig):
    """(train, val, test) Datasets: val is held out of train (seeded); never empty."""
    from edgekit.data import load_dataset

    if isinstance(data, str):
        train, test = load_dataset(data, "train"), load_dataset(data, "test")
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        train, test = data
    elif isinstance(data, (tuple, list)) and len(data) == 3:
        return tuple(data)
    else:
        raise UsageError(f"data must be a data set name or a (train, test) pair, got {type(data).__name__}")
    for name, part in (("training", train), ("test", test)):
        if part is None or len(part) == 0:
            raise DataError(f"the {name} data is empty: the search needs labelled examples to fine-tune and score "
                            "candidates", hint="check the data set files, or the --data-limit you gave")
    if len(train) < 20:
        raise DataError(f"the training data has only {len(train)} examples; the search needs at least 20")
    val_n = min(config.val_examples, max(1, len(train) // 5))
    train, val = train.split_off(val_n, seed=config.seed)
    if config.test_examples is not None:
        test = test.subset(config.test_examples, seed=config.seed)
    return train, val, test


# ---------------------------------------------------------------- the loop

class _Search:
    def __init__(self, state, config: SearchConfig, data, teacher, input_shape, device, *, proxy: bool, cache_dir,
                 artifacts_dir, say, on_event):
        from edgekit.optimize.latency_table import LatencyTable

        self.state, self.config = state, config
        self.train, self.val, self.test = data
        self.teacher, self.input_shape, self.device, self.proxy = teacher, tuple(input_shape), device, proxy
        self.say = say
        # shared between runs, compiled artifacts are reused (content-addressed); default: inside the run dir
        self.artifacts_dir = Path(artifacts_dir) if artifacts_dir else state.artifacts_dir
        self.on_event = on_event or (lambda kind, payload: None)
        setup = state.config["setup"]
        identity = setup["device"].get("identity", "local") if not proxy else (
            f"ssh:{setup['host']}" if setup.get("host") else "local")
        self.table = LatencyTable.open(identity=identity, target=config.target, threads=setup.get("threads", 1),
                                       cache_dir=cache_dir)

    # -- helpers ------------------------------------------------------------------------------------------

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
        from edgekit.compile import compile_model
        from edgekit.optimize.quantize_choice import quantized_layer_names

        extra = {}
        if quantized_layer_names(model):
            # int8 activations round at .5 boundaries: a real image and a looser tolerance keep the check meaningful
            extra = {"reference_inputs": [self.val.x[:1].numpy()], "tolerance": {"atol": 1e-2, "rtol": 1e-2}}
        return compile_model(model, self.config.target, input_shapes=shapes or [self.input_shape],
                             out_dir=self.artifacts_dir, **extra)

    def device_measure(self, artifact, *, kernels=False):
        """``measure_rounds`` separate runs on the device; the least-disturbed one (lowest median) is kept.

        On a shared host other processes can only add time, so the round they disturbed least is the best
        estimate of the device's own latency; on a dedicated board the rounds agree and this changes nothing.
        Every round's median is recorded.  Per-kernel times: each kernel's lowest median over the rounds.
        """
        reports = [self.device.measure(artifact, kernels=kernels, warmup=self.config.warmup,
                                       repeats=self.config.repeats, kernel_repeats=self.config.kernel_repeats)
                   for _ in range(max(1, self.config.measure_rounds))]
        report = min(reports, key=lambda r: r.stats["median_ms"])
        report.stats["round_medians_ms"] = [r.stats["median_ms"] for r in reports]
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
            self._require_table(layers)
            predicted = self.table.conv_sum_ms(layers, self.config.metric) + self.state["proxy_residual_ms"]
            return {"arch": arch, "latency_ms": predicted, "median_ms": predicted, "p90_ms": predicted,
                    "size_bytes": _param_bytes(model) + self.state["proxy_size_overhead"], "source": "predicted",
                    "artifact_id": None}
        cached = self.table.get(arch) if (self.config.reuse_measurements and not fresh) else None
        if cached is not None:
            self.table.stats["hits"] += 1
            return {"arch": arch, "latency_ms": self.metric_ms(cached), "median_ms": cached["median_ms"],
                    "p90_ms": cached["p90_ms"], "size_bytes": cached["size_bytes"], "source": "measured (cached)",
                    "artifact_id": cached.get("artifact_id")}
        artifact = self.compile(model)
        report = self.device_measure(artifact)
        entry = {"source": "model", "median_ms": report.stats["median_ms"], "p90_ms": report.stats["p90_ms"],
                 "round_medians_ms": report.stats.get("round_medians_ms"),
                 "samples_ms": report.samples_ms, "size_bytes": artifact.size_bytes,
                 "artifact_id": artifact.artifact_id}
        if not fresh or self.table.get(arch) is None:
            # a fresh re-measurement (the final check) never replaces the number earlier decisions were made on,
            # so that a resumed or repeated search sees exactly what the first one saw
            self.table.put(arch, entry)
            self.table.save()
        return {"arch": arch, "latency_ms": self.metric_ms(entry), "median_ms": entry["median_ms"],
                "p90_ms": entry["p90_ms"], "size_bytes": entry["size_bytes"], "source": "measured",
                "round_medians_ms": entry["round_medians_ms"],
                "artifact_id": artifact.artifact_id, "device": report.device}

    def _require_table(self, layers):
        missing = self.table.missing([spec for _, spec in layers])
        if missing:
            raise UsageError(f"proxy mode: the cached latency table {self.table.path} lacks {len(missing)} kernel "
                             f"signature(s), e.g. {missing[0].signature}",
                             hint="run the search once against the device (without --proxy) to fill the table")

    def accuracy(self, model, data) -> float:
        from edgekit.evaluate import evaluate

        return round(evaluate(model, data), 5)

    def finetune(self, model, *, epochs: int, examples: int | None, seed: int) -> None:
        from edgekit.compress.distill import TrainConfig, distill

        data = self.train if examples is None else self.train.subset(examples, seed=seed)
        cfg = TrainConfig(epochs=epochs, lr=self.config.lr, batch_size=self.config.batch_size, seed=seed,
                          val_size=0, patience=1)
        distill(model, self.teacher, data, config=cfg, progress=False)

    def groups(self, model) -> list:
        import fnmatch

        from edgekit.compress.prune import dependency_groups

        out = []
        for g in dependency_groups(model, input_shape=self.input_shape):
            if g.frozen or any(fnmatch.fnmatchcase(g.name, pat) for pat in self.config.exclude):
                continue
            out.append(g)
        return out

    def widths_for(self, original: int, current: int) -> list[int]:
        """Candidate widths below ``current``, largest first: multiples of a fixed fraction of the original."""
        step = max(1, round(original * self.config.width_step_ratio))
        floor = max(1, math.ceil(original * self.config.min_width_ratio))
        widths = [original - k * step for k in range(1, original // step + 1)]
        return [w for w in widths if floor <= w < current]

    def prune_to(self, model, group, width: int):
        from edgekit.compress.prune import PruneConfig, prune_model

        ratio = (group.channels - width) / group.channels
        result = prune_model(model, PruneConfig(ratio=0.0, layer_ratios={group.name: ratio}),
                             input_shape=self.input_shape)
        return result.model

    def widths_of(self, model) -> dict[str, int]:
        return {g.name: g.channels for g in self.groups(model)}

    def meets(self, measured: dict) -> dict[str, bool]:
        c = self.config
        return {"latency": c.latency_budget_ms is None or measured["latency_ms"] <= c.latency_budget_ms,
                "size": c.size_budget_bytes is None or measured["size_bytes"] <= c.size_budget_bytes}

    # -- phases -------------------------------------------------------------------------------------------

    def run(self) -> OptimizeResult:
        state = self.state
        if state["baseline"] is None:
            self.start()
        elif not self.proxy:
            # A resumed search: one short fresh run tells whether the device is still the one the table knows.
            model = state.load_model(state.checkpoint_path(state["iteration"]))
            artifact = self.compile(model)
            report = self.device.measure(artifact, warmup=1, repeats=3)
            stale = self.table.observe(report.device)
            if stale:
                self.say(f"latency table: {stale} cached entries are stale (device changed); they are re-measured")
        while state["status"] == "running":
            self.iterate()
        return self.finish()

    def start(self):
        state, c = self.state, self.config
        model = state.load_model(state.checkpoint_path(0))
        if self.proxy:
            self.prepare_proxy(model)
        else:
            artifact = self.compile(model)
            report = self.device.measure(artifact, warmup=1, repeats=3)  # the device's fingerprint, first
            stale = self.table.observe(report.device)
            if stale:
                self.say(f"latency table {self.table.path}: {stale} cached entries are stale (the device's "
                         "runtime or fingerprint changed); they will be re-measured")
        measured = self.measure_model(model)
        layers = self._layers(model)
        val_acc = self.accuracy(model, self.val)
        test_acc = self.accuracy(model, self.test)
        original = self.widths_of(model)
        if not original:
            raise UsageError(f"{type(model).__name__} has no prunable layer group (every channel group is frozen "
                             "or excluded)", hint="see `edgekit compress --explain` for why groups are frozen")
        residual = measured["latency_ms"] - self._conv_sum(layers) if layers is not None else 0.0
        state["baseline"] = {**measured, "val_accuracy": val_acc, "test_accuracy": test_acc, "widths": original,
                             "macs": _macs(model, self.input_shape), "params": _params(model)}
        state["original_widths"] = original
        state["current"] = {**measured, "val_accuracy": val_acc, "widths": original, "residual_ms": residual,
                            "iteration": 0}
        state["candidates"].append({"id": "baseline", "iteration": 0, "kind": "baseline", "widths": original,
                                    "latency_ms": measured["latency_ms"], "latency_source": measured["source"],
                                    "size_bytes": measured["size_bytes"], "val_accuracy": val_acc,
                                    "test_accuracy": test_acc})
        state.event("baseline", latency_ms=measured["latency_ms"], val_accuracy=val_acc)
        state.save()
        if layers is not None and not all(self.meets(measured).values()):
            self.check_feasible(model, residual)
        self.say(f"baseline: {measured['latency_ms']:.3f} ms ({c.metric}, {measured['source']}), "
                 f"{measured['size_bytes']} bytes, val accuracy {val_acc:.4f}")
        self.emit("baseline", **state["baseline"])

    def check_feasible(self, model, residual: float) -> None:
        """Stop at once when even the smallest model the search may build cannot meet the budget.

        Every group at its minimum width is predicted from the table; when that is clearly over the
        budget (beyond the device's noise), that model is fine-tuned briefly and verified on the device,
        and reported as the closest candidate, without a long search that cannot succeed.
        """
        from edgekit.optimize.latency_table import conv_layers

        c, state = self.config, self.state
        smallest = model
        original = state["original_widths"]
        for g in self.groups(model):
            widths = self.widths_for(original[g.name], g.channels)
            if widths:
                group = next(x for x in self.groups(smallest) if x.name == g.name)
                smallest = self.prune_to(smallest, group, widths[-1])
        layers = conv_layers(smallest, self.input_shape)
        if not self.proxy:
            if self.fill([spec for _, spec in layers]) is None:
                return
        else:
            self._require_table(layers)
        predicted = self.table.conv_sum_ms(layers, c.metric) + residual
        size = state["baseline"]["size_bytes"] - (_param_bytes(model) - _param_bytes(smallest))
        over_latency = c.latency_budget_ms is not None and predicted > c.latency_budget_ms * 1.2
        over_size = c.size_budget_bytes is not None and size > c.size_budget_bytes * 1.05
        if not (over_latency or over_size):
            return
        self.say(f"the smallest model the search may build is predicted at {predicted:.3f} ms, {size} bytes: "
                 "the budget cannot be met; verifying it")
        self.finetune(smallest, epochs=c.finetune_epochs, examples=c.finetune_examples, seed=c.seed * 100003 + 3)
        measured = self.measure_model(smallest)
        acc = self.accuracy(smallest, self.val)
        state.save_model(smallest, state.run_dir / "checkpoints" / "smallest.pt")
        state["candidates"].append({"id": "smallest", "iteration": 0, "kind": "smallest", "chosen": False,
                                    "verified": True, "widths": self.widths_of(smallest),
                                    "predicted_latency_ms": predicted, "latency_ms": measured["latency_ms"],
                                    "latency_source": measured["source"], "size_bytes": measured["size_bytes"],
                                    "val_accuracy": acc, "model_path": str(state.run_dir / "checkpoints" / "smallest.pt")})
        state["status"] = "impossible"
        state["stop_reason"] = (f"even with every layer group at its minimum width the model measures "
                                f"{measured['latency_ms']:.3f} ms {c.metric} (predicted {predicted:.3f}) and "
                                f"{measured['size_bytes']} bytes")
        state.save()

    def prepare_proxy(self, model):
        """Proxy mode: no device; the residual comes from a cached whole-model measurement of the start model."""
        from edgekit.optimize.latency_table import architecture_signature

        layers = self._layers(model)
        self._require_table(layers)
        arch = self.table.get(architecture_signature(model, self.input_shape)) if self.table.fingerprint else None
        if arch is None:
            self.state["proxy_residual_ms"] = 0.0
            self.say("proxy mode: no cached whole-model measurement of the start model; residual taken as 0 ms")
        else:
            self.state["proxy_residual_ms"] = self.metric_ms(arch) - self.table.conv_sum_ms(layers, self.config.metric)
        self.state["proxy_size_overhead"] = (arch["size_bytes"] - _param_bytes(model)) if arch else 0

    def _layers(self, model):
        from edgekit.optimize.latency_table import conv_layers

        if self.mode != "kernels":
            return None
        layers = conv_layers(model, self.input_shape)
        if not self.proxy and self.fill([spec for _, spec in layers]) is None:
            return None
        return layers

    def _conv_sum(self, layers) -> float:
        return self.table.conv_sum_ms(layers, self.config.metric)

    def iterate(self):
        state, c = self.state, self.config
        it = state["iteration"] + 1
        current = state["current"]
        met = self.meets(current)
        if all(met.values()):
            state["status"] = "met"
            state.save()
            return
        if it > c.max_iterations:
            state["status"] = "exhausted"
            state["stop_reason"] = f"reached max_iterations ({c.max_iterations})"
            state.save()
            return
        # Drop what an interrupted run of this iteration left: it is redone from the checkpoint, same seeds.
        state["candidates"] = [x for x in state["candidates"] if x.get("iteration") != it]
        model = state.load_model(state.checkpoint_path(it - 1))
        resource = "latency" if not met["latency"] else "size"
        base = state["baseline"]
        if resource == "latency":
            floor = c.latency_budget_ms * (1 - c.margin_ratio)
            goal = max(current["latency_ms"] - c.step_ratio * base["latency_ms"], floor)
        else:
            floor = c.size_budget_bytes * (1 - c.margin_ratio)
            goal = max(current["size_bytes"] - c.step_ratio * base["size_bytes"], floor)
        self.say(f"iteration {it}: {resource} {self._fmt(resource, current)} -> target {goal:.4g}")
        original = state["original_widths"]
        groups = self.groups(model)
        # every (group, width) candidate's layers, so that one probe measures all missing kernels at once
        variants: dict[str, list[tuple[int, Any]]] = {}
        for g in groups:
            variants[g.name] = [(w, self.prune_to(model, g, w)) for w in self.widths_for(original[g.name], g.channels)]
        if self.mode == "kernels":
            from edgekit.optimize.latency_table import conv_layers

            specs = [spec for vs in variants.values() for _, m in vs for _, spec in conv_layers(m, self.input_shape)]
            specs += [spec for _, spec in conv_layers(model, self.input_shape)]
            if self.proxy:
                self._require_table([(None, s) for s in specs])
            else:
                n = self.fill(specs)
                if n:
                    self.say(f"  latency table: measured {n} new kernel signature(s) on the device")
        proposals, fallback = [], []
        current_param_bytes = _param_bytes(model)
        now = current["latency_ms"] if resource == "latency" else current["size_bytes"]
        for gi, g in enumerate(groups):
            best = None
            for w, variant in variants[g.name]:
                predicted = self.predict(variant, current, current_param_bytes)
                value = predicted["latency_ms"] if resource == "latency" else predicted["size_bytes"]
                if value <= goal:
                    proposals.append((gi, g, w, variant, predicted))
                    break  # the smallest step in this group that reaches the target
                if value < now * 0.99 and (best is None or value < best[0]):
                    best = (value, (gi, g, w, variant, predicted))
            else:
                if best is not None:
                    fallback.append(best[1])
        if not proposals:
            # No single group reaches this iteration's target: take each group's largest measured gain instead,
            # so that budgets reachable only by shrinking several groups are still reached.
            proposals = fallback
            if proposals:
                self.say("  no group reaches the target in one step; proposing each group's largest gain")
        if not proposals:
            state["status"] = "exhausted"
            state["stop_reason"] = "no layer group can be shrunk enough to reach the next target"
            state.save()
            return
        scored = []
        for gi, g, w, variant, predicted in proposals:
            seed = c.seed * 100003 + it * 101 + gi
            self.finetune(variant, epochs=c.finetune_epochs, examples=c.finetune_examples, seed=seed)
            acc = self.accuracy(variant, self.val)
            widths = {**current["widths"], g.name: w}
            cand = {"id": f"it{it}-{g.name}-{w}", "iteration": it, "kind": "proposal", "group": g.name,
                    "width": w, "from_width": g.channels, "widths": widths,
                    "predicted_latency_ms": predicted["latency_ms"], "predicted_size_bytes": predicted["size_bytes"],
                    "latency_ms": predicted["latency_ms"], "latency_source": predicted["source"],
                    "size_bytes": predicted["size_bytes"], "val_accuracy": acc, "macs": _macs(variant, self.input_shape)}
            state["candidates"].append(cand)
            scored.append((acc, -predicted["latency_ms"], -gi, cand, variant))
            self.say(f"  proposal {g.name}: {g.channels} -> {w} channels, predicted {predicted['latency_ms']:.3f} ms, "
                     f"val accuracy {acc:.4f}")
            state.save()
        acc, _, _, cand, chosen = max(scored, key=lambda t: t[:3])
        if c.accuracy_floor is not None and acc < c.accuracy_floor:
            state["status"] = "floor"
            state["stop_reason"] = (f"the best next step ({cand['id']}) has val accuracy {acc:.4f}, below the floor "
                                    f"{c.accuracy_floor}")
            state.save()
            return
        measured = self.measure_model(chosen)
        layers = self._layers(chosen)
        residual = measured["latency_ms"] - self._conv_sum(layers) if layers is not None else 0.0
        cand.update({"chosen": True, "latency_ms": measured["latency_ms"], "latency_source": measured["source"],
                     "median_ms": measured["median_ms"], "p90_ms": measured["p90_ms"],
                     "size_bytes": measured["size_bytes"], "artifact_id": measured.get("artifact_id")})
        state.save_model(chosen, state.checkpoint_path(it))  # before the state that names it
        step = {"iteration": it, "group": cand["group"], "from_width": cand["from_width"], "to_width": cand["width"],
                "predicted_latency_ms": cand["predicted_latency_ms"], "latency_ms": measured["latency_ms"],
                "latency_source": measured["source"], "size_bytes": measured["size_bytes"], "val_accuracy": acc,
                "widths": cand["widths"], "target": goal, "resource": resource}
        state["steps"].append(step)
        state["current"] = {**measured, "val_accuracy": acc, "widths": cand["widths"], "residual_ms": residual,
                            "iteration": it}
        state["iteration"] = it
        state.event("step", **{k: step[k] for k in ("iteration", "group", "to_width", "latency_ms")})
        state.save()
        self.say(f"  chose {cand['group']} -> {cand['width']}: {measured['latency_ms']:.3f} ms {measured['source']}"
                 f" (predicted {cand['predicted_latency_ms']:.3f}), val accuracy {acc:.4f}")
        self.emit("step", **step)

    def predict(self, model, current, current_param_bytes: int) -> dict[str, Any]:
        if self.mode == "whole":
            measured = self.measure_model(model)
            return {**measured, "source": "measured (whole model)"}
        from edgekit.optimize.latency_table import conv_layers

        layers = conv_layers(model, self.input_shape)
        latency = self._conv_sum(layers) + current["residual_ms"]
        size = current["size_bytes"] - (current_param_bytes - _param_bytes(model))
        return {"latency_ms": latency, "size_bytes": int(size),
                "source": "predicted (latency table)" if not self.proxy else "predicted (proxy)"}

    def _fmt(self, resource, m):
        return f"{m['latency_ms']:.3f} ms" if resource == "latency" else f"{m['size_bytes']} bytes"

    # -- the end ------------------------------------------------------------------------------------------

    def finish(self) -> OptimizeResult:
        state, c = self.state, self.config
        if state["result"] is not None and state["status"] in ("done", "budget_not_met"):
            return _result_from_state(state)
        if state["status"] == "met":
            it = state["iteration"]
            model = state.load_model(state.checkpoint_path(it))
            final_path = state.run_dir / "final.pt"
            if it > 0:
                self.say(f"final distillation: {c.final_epochs} epoch(s)")
                self.finetune(model, epochs=c.final_epochs, examples=c.final_examples, seed=c.seed * 100003 + 7)
            widths = self.widths_of(model)
            if c.quantize and not self.proxy:
                model = self.choose_precision(model)
            state.save_model(model, final_path)
            chosen = self.describe_final(model, it, widths)
            met = all(self.meets(chosen).values()) and (
                c.accuracy_floor is None or chosen["val_accuracy"] >= c.accuracy_floor)
            state["status"] = "done" if met else "budget_not_met"
            message = ("budget met" if met else
                       f"the chosen model misses the budget when measured again: {chosen['latency_ms']:.3f} ms")
            state["chosen"] = chosen
            state["model_path"] = str(final_path)
        else:
            closest = self.closest()
            state["status"] = "budget_not_met"
            chosen = closest
            message = (f"budget cannot be met: {state.data.get('stop_reason', state['status'])}; the closest candidate "
                       f"({closest['id']}) has {closest['latency_ms']:.3f} ms {c.metric}, {closest['size_bytes']} bytes, "
                       f"val accuracy {closest['val_accuracy']:.4f}")
            state["chosen"] = chosen
            state["model_path"] = closest.get("model_path")
        if state.data.get("quantization"):
            chosen["precision"] = state["quantization"]["layers"]
            chosen["quantization"] = state["quantization"]
        state["message"] = message
        state.save()
        self.say(message)
        return _result_from_state(state, table=self._table_info())

    def choose_precision(self, model):
        """Per-layer int8/float (quantize_choice.py); returns the model to ship."""
        from edgekit.optimize.quantize_choice import choose_int8_layers

        self.say("per-layer int8 or float: measuring float and int8 on the device")
        choice = choose_int8_layers(model, calibration_data=self.train,
                                    accuracy_fn=lambda m: self.accuracy(m, self.val),
                                    measure_fn=lambda m: self.measure_model(m), max_drop=self.config.int8_max_drop)
        self.state["quantization"] = {k: v for k, v in choice.items() if k != "model"}
        self.say(f"  {choice['reason']}")
        return choice["model"] if choice["model"] is not None else model

    def describe_final(self, model, it: int, widths: dict[str, int] | None = None) -> dict[str, Any]:
        """The chosen model: test accuracy, and a fresh measurement on the device (its outputs checked there)."""
        measured = self.measure_model(model, fresh=not self.proxy)
        val_acc = self.accuracy(model, self.val)
        test_acc = self.accuracy(model, self.test)
        cand = {"id": "final", "iteration": it, "kind": "final", "widths": widths or self.widths_of(model),
                "latency_ms": measured["latency_ms"], "median_ms": measured["median_ms"],
                "p90_ms": measured["p90_ms"], "latency_source": measured["source"],
                "size_bytes": measured["size_bytes"], "val_accuracy": val_acc, "test_accuracy": test_acc,
                "artifact_id": measured.get("artifact_id"), "macs": _macs(model, self.input_shape),
                "params": _params(model), "model_path": str(self.state.run_dir / "final.pt")}
        self.state["candidates"] = [x for x in self.state["candidates"] if x.get("kind") != "final"] + [cand]
        return cand

    def closest(self) -> dict[str, Any]:
        """The verified model nearest the budget, among those that keep the accuracy floor."""
        c, state = self.config, self.state
        verified = [x for x in state["candidates"] if x.get("kind") == "baseline" or x.get("chosen")
                    or x.get("verified")]
        floor_ok = [x for x in verified if c.accuracy_floor is None or x["val_accuracy"] >= c.accuracy_floor]
        pool = floor_ok or verified

        def excess(x):
            lat = (x["latency_ms"] / c.latency_budget_ms) if c.latency_budget_ms else 0.0
            size = (x["size_bytes"] / c.size_budget_bytes) if c.size_budget_bytes else 0.0
            return max(lat, size)

        best = min(pool, key=excess)
        path = best.get("model_path") or str(state.checkpoint_path(best["iteration"]))
        best = {**best, "model_path": path}
        if "test_accuracy" not in best:
            best["test_accuracy"] = self.accuracy(state.load_model(Path(path)), self.test)
        return best

    def _table_info(self):
        return {"path": str(self.table.path), "fingerprint": self.table.fingerprint, **self.table.stats,
                "entries": len(self.table.entries), "mode": self.mode}


def _result_from_state(state, table=None) -> OptimizeResult:
    c = state.config["search"]
    setup = state.config["setup"]
    return OptimizeResult(
        met=state["status"] == "done", status=state["status"], proxy=bool(setup["proxy"]), run_dir=state.run_dir,
        chosen=state["chosen"], baseline=state["baseline"], steps=state["steps"], candidates=state["candidates"],
        budget={"latency_ms": c["latency_budget_ms"], "metric": c["metric"], "size_bytes": c["size_budget_bytes"],
                "accuracy_floor": c["accuracy_floor"], "target": c["target"]},
        device=setup["device"], table=table or (state["result"] or {}).get("table", {}),
        model_path=Path(state["model_path"]) if state.data.get("model_path") else None,
        message=state.data.get("message", ""), reports=(state["result"] or {}).get("reports", {}))


def _params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _param_bytes(model) -> int:
    return 4 * _params(model)


def _macs(model, input_shape) -> int:
    from edgekit.compress.stats import count_macs

    return count_macs(model, input_shape)


def flops_proposal(model, group_name: str, *, input_shape, step_ratio: float, width_step_ratio: float = 0.125,
                   min_width_ratio: float = 0.25, original_width: int | None = None) -> int | None:
    """The width a FLOPs-driven NetAdapt step would give ``group_name``: the smallest step that cuts the
    model's conv MACs by ``step_ratio`` (for comparison with the measured choice; the search never uses it)."""
    from edgekit.compress.prune import dependency_groups
    from edgekit.compress.stats import count_macs

    group = next(g for g in dependency_groups(model, input_shape=input_shape) if g.name == group_name)
    original = original_width or group.channels
    step = max(1, round(original * width_step_ratio))
    floor = max(1, math.ceil(original * min_width_ratio))
    base = count_macs(model, input_shape, linear=False)
    from edgekit.compress.prune import PruneConfig, prune_model

    for w in [original - k * step for k in range(1, original // step + 1)]:
        if w < floor or w >= group.channels:
            continue
        ratio = (group.channels - w) / group.channels
        pruned = prune_model(model, PruneConfig(ratio=0.0, layer_ratios={group_name: ratio}),
                             input_shape=input_shape).model
        if count_macs(pruned, input_shape, linear=False) <= base * (1 - step_ratio):
            return w
    return None
