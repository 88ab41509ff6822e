"""The loop of the optimize search: its phases (start, iterate, finish), on a run's saved state.

Each iteration, with ``L`` the current model's latency *measured on the device*:

1. the iteration's target is ``L - step`` (``step`` = ``step_ratio`` x the baseline's latency; never
   below the budget minus a small margin);
2. for every prunable layer group (proposals.py), the *smallest* pruning step whose predicted latency
   meets the target (prediction.py: the latency table plus a residual re-measured on every verified
   model -- no FLOPs or parameter counts);
3. each proposal is pruned (L1 channel importance), distilled briefly from the starting model
   (seeded), and scored on held-out data; the most accurate one wins;
4. the winner is compiled for the target and its whole-model latency is measured on the device;
   that measurement is the next iteration's ``L``.

It stops when the budget (latency median or p90, size) holds, when no group can shrink any more, or when
accuracy would fall below the floor; the chosen model is then distilled longer and measured again on the
device.  Every step is saved in the run directory (state.py), so an interrupted search resumes where it
stopped, with the same seeds and the same measurements.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from edgekit.compress.stats import count_macs, count_params
from edgekit.errors import UsageError
from edgekit.optimize.prediction import MEASURED_EXTRAS, LatencyOracle, param_bytes
from edgekit.optimize.proposals import RESOURCE_KEYS, PruningSpace, select_proposals
from edgekit.optimize.records import Candidate, CandidateKind, OptimizeResult, SearchStatus, result_from_state



def extras_of(measured: dict) -> dict:
    """The interval and memory figures of a whole-model measurement, as Candidate fields (absent: None)."""
    return {k: measured.get(k) for k in MEASURED_EXTRAS}

class SearchLoop:
    def __init__(self, state, config, data, teacher, input_shape, device, *, proxy: bool, cache_dir,
                 artifacts_dir, say, on_event):
        self.state, self.config = state, config
        self.train, self.val, self.test = data
        self.teacher, self.input_shape, self.device, self.proxy = teacher, tuple(input_shape), device, proxy
        self.say = say
        self.space = PruningSpace(config, input_shape)
        self.latency = LatencyOracle(state, config, device, proxy=proxy, input_shape=input_shape,
                                     reference_input=self.val.x[:1].numpy(), cache_dir=cache_dir,
                                     artifacts_dir=artifacts_dir, say=say, on_event=on_event)

    def accuracy(self, model, data) -> float:
        from edgekit.evaluate import evaluate

        return round(evaluate(model, data), 5)

    def finetune(self, model, *, epochs: int, examples: int | None, seed: int) -> None:
        from edgekit.compress.distill import TrainConfig, distill

        data = self.train if examples is None else self.train.subset(examples, seed=seed)
        cfg = TrainConfig(epochs=epochs, lr=self.config.lr, batch_size=self.config.batch_size, seed=seed,
                          val_size=0, patience=1)
        distill(model, self.teacher, data, config=cfg, progress=False, nproc_per_node=self.config.nproc_per_node)

    def meets(self, measured: dict) -> dict[str, bool]:
        c = self.config
        memory = measured.get("model_memory_bytes")  # None: not known (an artifact compiled before it was recorded)
        return {"latency": c.latency_budget_ms is None or measured["latency_ms"] <= c.latency_budget_ms,
                "memory": c.memory_budget_mb is None or (memory is not None and memory <= c.memory_budget_bytes),
                "size": c.size_budget_bytes is None or measured["size_bytes"] <= c.size_budget_bytes}

    def run(self) -> OptimizeResult:
        state = self.state
        if state["baseline"] is None:
            self.start()
        elif not self.proxy:
            # A resumed search: one short fresh run tells whether the device is still the one the table knows.
            stale = self.latency.check_device(state.load_model(state.checkpoint_path(state["iteration"])))
            if stale:
                self.say(f"latency table: {stale} cached entries are stale (device changed); they are re-measured")
        while state["status"] == SearchStatus.RUNNING:
            self.iterate()
        return self.finish()

    def start(self):
        state, c = self.state, self.config
        model = state.load_model(state.checkpoint_path(0))
        if self.proxy:
            self.latency.prepare_proxy(model)
        else:
            # The device's fingerprint first, where cached entries could be stale; an empty table learns it
            # from the baseline's own measurement (one short run on the device fewer).
            stale = self.latency.check_device(model) if self.latency.table.entries else 0
            if stale:
                self.say(f"latency table {self.latency.table.path}: {stale} cached entries are stale (the device's "
                         "runtime or fingerprint changed); they will be re-measured")
        measured = self.latency.measure_model(model)
        layers = self.latency.layers(model)
        val_acc = self.accuracy(model, self.val)
        test_acc = self.accuracy(model, self.test)
        original = self.space.widths_of(model)
        if not original:
            raise UsageError(f"{type(model).__name__} has no prunable layer group (every channel group is frozen "
                             "or excluded)", hint="see `edgekit compress --explain` for why groups are frozen")
        residual = measured["latency_ms"] - self.latency.conv_sum(layers) if layers is not None else 0.0
        state["baseline"] = {**measured, "val_accuracy": val_acc, "test_accuracy": test_acc, "widths": original,
                             "macs": count_macs(model, self.input_shape), "params": count_params(model)}
        if layers is not None:  # the table's per-layer latency, by module path as the cost card names them
            state["baseline"]["layer_latency"] = self.latency.table.layer_rows(layers, c.metric)
        state["original_widths"] = original
        state["current"] = {**measured, "val_accuracy": val_acc, "widths": original, "residual_ms": residual,
                            "iteration": 0}
        self.add_candidate(Candidate(id="baseline", iteration=0, kind=CandidateKind.BASELINE, widths=original,
                                     latency_ms=measured["latency_ms"], latency_source=measured["source"],
                                     size_bytes=measured["size_bytes"], val_accuracy=val_acc, test_accuracy=test_acc,
                                     **extras_of(measured)))
        state.event("baseline", latency_ms=measured["latency_ms"], val_accuracy=val_acc)
        state.save()
        if layers is not None and not all(self.meets(measured).values()):
            self.check_feasible(model, residual)
        self.say(f"baseline: {measured['latency_ms']:.3f} ms ({c.metric}, {measured['source']}), "
                 f"{measured['size_bytes']} bytes, val accuracy {val_acc:.4f}")
        slowest = [r for r in state["baseline"].get("layer_latency", []) if r["latency_ms"] is not None][:3]
        if slowest:
            self.say("  slowest layers (latency table): " + ", ".join(f"{r['module']} {r['latency_ms']:.3f} ms"
                                                                     for r in slowest))
        self.latency.emit("baseline", **state["baseline"])

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
        for g in self.space.groups(model):
            widths = self.space.widths_for(original[g.name], g.channels)
            if widths:
                group = next(x for x in self.space.groups(smallest) if x.name == g.name)
                smallest = self.space.prune_to(smallest, group, widths[-1])
        layers = conv_layers(smallest, self.input_shape)
        if not self.proxy:
            if self.latency.fill([spec for _, spec in layers]) is None:
                return
        else:
            self.latency.require_table(layers)
        predicted = self.latency.table.conv_sum_ms(layers, c.metric) + residual
        size = state["baseline"]["size_bytes"] - (param_bytes(model) - param_bytes(smallest))
        over_latency = c.latency_budget_ms is not None and predicted > c.latency_budget_ms * 1.2
        over_size = c.size_budget_bytes is not None and size > c.size_budget_bytes * 1.05
        if not (over_latency or over_size):
            return
        self.say(f"the smallest model the search may build is predicted at {predicted:.3f} ms, {size} bytes: "
                 "the budget cannot be met; verifying it")
        self.finetune(smallest, epochs=c.finetune_epochs, examples=c.finetune_examples, seed=c.seed * 100003 + 3)
        measured = self.latency.measure_model(smallest)
        acc = self.accuracy(smallest, self.val)
        state.save_model(smallest, state.run_dir / "checkpoints" / "smallest.pt")
        self.add_candidate(Candidate(id="smallest", iteration=0, kind=CandidateKind.SMALLEST, verified=True,
                                     widths=self.space.widths_of(smallest), predicted_latency_ms=predicted,
                                     latency_ms=measured["latency_ms"], latency_source=measured["source"],
                                     size_bytes=measured["size_bytes"], val_accuracy=acc, **extras_of(measured),
                                     model_path=str(state.run_dir / "checkpoints" / "smallest.pt")))
        state["status"] = SearchStatus.IMPOSSIBLE
        state["stop_reason"] = (f"even with every layer group at its minimum width the model measures "
                                f"{measured['latency_ms']:.3f} ms {c.metric} (predicted {predicted:.3f}) and "
                                f"{measured['size_bytes']} bytes")
        state.save()

    def iterate(self):
        """One step: a target below the current latency (or size), a proposal per group, the best one verified."""
        state, c = self.state, self.config
        it = state["iteration"] + 1
        current = state["current"]
        met = self.meets(current)
        if all(met.values()):
            state["status"] = SearchStatus.MET
            state.save()
            return
        if it > c.max_iterations:
            state["status"] = SearchStatus.EXHAUSTED
            state["stop_reason"] = f"reached max_iterations ({c.max_iterations})"
            state.save()
            return
        # Drop what an interrupted run of this iteration left: it is redone from the checkpoint, same seeds.
        state["candidates"] = [x for x in state["candidates"] if x.get("iteration") != it]
        model = state.load_model(state.checkpoint_path(it - 1))
        resource = "latency" if not met["latency"] else ("size" if not met["size"] else "memory")
        goal = self._goal(resource, current)
        self.say(f"iteration {it}: {resource} {self._fmt(resource, current)} -> target {goal:.4g}")
        groups = self.space.groups(model)
        variants = self._variants(model, groups)
        current_param_bytes = param_bytes(model)
        proposals, fallback = select_proposals(
            groups, variants, lambda variant: self.latency.predict(variant, current, current_param_bytes),
            resource=resource, goal=goal,
            now=current[RESOURCE_KEYS[resource]])
        if proposals and fallback:
            self.say("  no group reaches the target in one step; proposing each group's largest gain")
        if not proposals:
            state["status"] = SearchStatus.EXHAUSTED
            state["stop_reason"] = "no layer group can be shrunk enough to reach the next target"
            state.save()
            return
        acc, cand, chosen = self._score(proposals, it, current["widths"])
        if c.accuracy_floor is not None and acc < c.accuracy_floor:
            state["status"] = SearchStatus.FLOOR
            state["stop_reason"] = (f"the best next step ({cand.id}) has val accuracy {acc:.4f}, below the floor "
                                    f"{c.accuracy_floor}")
            state.save()
            return
        self._take_step(it, cand, chosen, goal, resource)

    def _goal(self, resource: str, current: dict) -> float:
        """This iteration's target: a step_ratio of the baseline below now, never below the budget's margin."""
        c, base = self.config, self.state["baseline"]
        if resource == "latency":
            floor = c.latency_budget_ms * (1 - c.margin_ratio)
            return max(current["latency_ms"] - c.step_ratio * base["latency_ms"], floor)
        if resource == "memory":
            floor = c.memory_budget_bytes * (1 - c.margin_ratio)
            return max(current["model_memory_bytes"] - c.step_ratio * base["model_memory_bytes"], floor)
        floor = c.size_budget_bytes * (1 - c.margin_ratio)
        return max(current["size_bytes"] - c.step_ratio * base["size_bytes"], floor)

    def _variants(self, model, groups) -> dict[str, list[tuple[int, Any]]]:
        """Every (group, width) candidate, pruned; their kernels missing from the table measured in one probe."""
        original = self.state["original_widths"]
        variants = {g.name: [(w, self.space.prune_to(model, g, w))
                             for w in self.space.widths_for(original[g.name], g.channels)] for g in groups}
        if self.latency.mode == "kernels":
            from edgekit.optimize.latency_table import conv_layers

            specs = [spec for vs in variants.values() for _, m in vs for _, spec in conv_layers(m, self.input_shape)]
            specs += [spec for _, spec in conv_layers(model, self.input_shape)]
            if self.proxy:
                self.latency.require_table([(None, s) for s in specs])
            else:
                n = self.latency.fill(specs)
                if n:
                    self.say(f"  latency table: measured {n} new kernel signature(s) on the device")
        return variants

    def _score(self, proposals, it: int, widths: dict[str, int]):
        """Fine-tune every proposal briefly (seeded) and score it on held-out data; the most accurate wins."""
        c, state = self.config, self.state
        scored = []
        for p in proposals:
            seed = c.seed * 100003 + it * 101 + p.index
            self.finetune(p.model, epochs=c.finetune_epochs, examples=c.finetune_examples, seed=seed)
            acc = self.accuracy(p.model, self.val)
            g, predicted = p.group, p.predicted
            cand = Candidate(id=f"it{it}-{g.name}-{p.width}", iteration=it, kind=CandidateKind.PROPOSAL,
                             group=g.name, width=p.width, from_width=g.channels, widths={**widths, g.name: p.width},
                             predicted_latency_ms=predicted["latency_ms"],
                             predicted_size_bytes=predicted["size_bytes"], latency_ms=predicted["latency_ms"],
                             latency_source=predicted["source"], size_bytes=predicted["size_bytes"],
                             val_accuracy=acc, macs=count_macs(p.model, self.input_shape))
            self.add_candidate(cand)
            scored.append((acc, -predicted["latency_ms"], -p.index, cand, p.model))
            self.say(f"  proposal {g.name}: {g.channels} -> {p.width} channels, predicted "
                     f"{predicted['latency_ms']:.3f} ms, val accuracy {acc:.4f}")
            state.save()
        acc, _, _, cand, chosen = max(scored, key=lambda t: t[:3])
        return acc, cand, chosen

    def _take_step(self, it: int, cand: Candidate, chosen, goal: float, resource: str) -> None:
        """Measure the winner on the device; it becomes the current model and the next iteration's start."""
        state = self.state
        measured = self.latency.measure_model(chosen)
        layers = self.latency.layers(chosen)
        residual = measured["latency_ms"] - self.latency.conv_sum(layers) if layers is not None else 0.0
        cand = replace(cand, chosen=True, latency_ms=measured["latency_ms"], latency_source=measured["source"],
                       median_ms=measured["median_ms"], p90_ms=measured["p90_ms"], size_bytes=measured["size_bytes"],
                       artifact_id=measured.get("artifact_id"), **extras_of(measured))
        self.replace_candidate(cand)
        state.save_model(chosen, state.checkpoint_path(it))  # before the state that names it
        step = {"iteration": it, "group": cand.group, "from_width": cand.from_width, "to_width": cand.width,
                "predicted_latency_ms": cand.predicted_latency_ms, "latency_ms": measured["latency_ms"],
                "latency_source": measured["source"], "size_bytes": measured["size_bytes"],
                "val_accuracy": cand.val_accuracy, "widths": cand.widths, "target": goal, "resource": resource}
        state["steps"].append(step)
        state["current"] = {**measured, "val_accuracy": cand.val_accuracy, "widths": cand.widths,
                            "residual_ms": residual, "iteration": it}
        state["iteration"] = it
        state.event("step", **{k: step[k] for k in ("iteration", "group", "to_width", "latency_ms")})
        state.save()
        self.say(f"  chose {cand.group} -> {cand.width}: {measured['latency_ms']:.3f} ms {measured['source']}"
                 f" (predicted {cand.predicted_latency_ms:.3f}), val accuracy {cand.val_accuracy:.4f}")
        self.latency.emit("step", **step)

    def add_candidate(self, cand: Candidate) -> None:
        self.state["candidates"].append(cand.to_dict())

    def replace_candidate(self, cand: Candidate) -> None:
        self.state["candidates"] = [cand.to_dict() if x["id"] == cand.id else x for x in self.state["candidates"]]

    def _fmt(self, resource, m):
        if resource == "memory":
            return f"{m['model_memory_bytes']} bytes of memory"
        return f"{m['latency_ms']:.3f} ms" if resource == "latency" else f"{m['size_bytes']} bytes"

    def finish(self) -> OptimizeResult:
        state, c = self.state, self.config
        if state["result"] is not None and SearchStatus(state["status"]).finished:
            return result_from_state(state)
        if state["status"] == SearchStatus.MET:
            it = state["iteration"]
            model = state.load_model(state.checkpoint_path(it))
            final_path = state.run_dir / "final.pt"
            if it > 0:
                self.say(f"final distillation: {c.final_epochs} epoch(s)")
                self.finetune(model, epochs=c.final_epochs, examples=c.final_examples, seed=c.seed * 100003 + 7)
            widths = self.space.widths_of(model)
            if c.quantize and not self.proxy:
                model = self.choose_precision(model)
            state.save_model(model, final_path)
            chosen = self.describe_final(model, it, widths)
            met = all(self.meets(chosen).values()) and (
                c.accuracy_floor is None or chosen["val_accuracy"] >= c.accuracy_floor)
            state["status"] = SearchStatus.DONE if met else SearchStatus.BUDGET_NOT_MET
            message = ("budget met" if met else
                       f"the chosen model misses the budget when measured again: {chosen['latency_ms']:.3f} ms")
            state["chosen"] = chosen
            state["model_path"] = str(final_path)
        else:
            closest = self.closest()
            state["status"] = SearchStatus.BUDGET_NOT_MET
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
        return result_from_state(state, table=self.latency.table_info())

    def choose_precision(self, model):
        """Per-layer int8/float (quantize_choice.py); returns the model to ship."""
        from edgekit.optimize.quantize_choice import choose_int8_layers

        self.say("per-layer int8 or float: measuring float and int8 on the device")
        choice = choose_int8_layers(model, calibration_data=self.train,
                                    accuracy_fn=lambda m: self.accuracy(m, self.val),
                                    measure_fn=lambda m: self.latency.measure_model(m),
                                    max_drop=self.config.int8_max_drop)
        self.state["quantization"] = {k: v for k, v in choice.items() if k != "model"}
        self.say(f"  {choice['reason']}")
        return choice["model"] if choice["model"] is not None else model

    def describe_final(self, model, it: int, widths: dict[str, int] | None = None) -> dict[str, Any]:
        """The chosen model: test accuracy, and a fresh measurement on the device (its outputs checked there)."""
        measured = self.latency.measure_model(model, fresh=not self.proxy)
        val_acc = self.accuracy(model, self.val)
        test_acc = self.accuracy(model, self.test)
        cand = Candidate(id="final", iteration=it, kind=CandidateKind.FINAL,
                         widths=widths or self.space.widths_of(model),
                         latency_ms=measured["latency_ms"], median_ms=measured["median_ms"], p90_ms=measured["p90_ms"],
                         latency_source=measured["source"], size_bytes=measured["size_bytes"], val_accuracy=val_acc,
                         test_accuracy=test_acc, artifact_id=measured.get("artifact_id"), **extras_of(measured),
                         macs=count_macs(model, self.input_shape), params=count_params(model),
                         model_path=str(self.state.run_dir / "final.pt"))
        self.state["candidates"] = [x for x in self.state["candidates"] if x.get("kind") != CandidateKind.FINAL]
        self.add_candidate(cand)
        return cand.to_dict()

    def closest(self) -> dict[str, Any]:
        """The verified model nearest the budget, among those that keep the accuracy floor."""
        c, state = self.config, self.state
        candidates = [Candidate.from_dict(x) for x in state["candidates"]]
        verified = [x for x in candidates if x.kind == CandidateKind.BASELINE or x.chosen or x.verified]
        floor_ok = [x for x in verified if c.accuracy_floor is None or x.val_accuracy >= c.accuracy_floor]
        pool = floor_ok or verified

        def excess(x: Candidate) -> float:
            lat = (x.latency_ms / c.latency_budget_ms) if c.latency_budget_ms else 0.0
            size = (x.size_bytes / c.size_budget_bytes) if c.size_budget_bytes else 0.0
            memory = ((x.model_memory_bytes or float("inf")) / c.memory_budget_bytes) if c.memory_budget_mb else 0.0
            return max(lat, size, memory)

        best = min(pool, key=excess)
        best = replace(best, model_path=best.model_path or str(state.checkpoint_path(best.iteration)))
        if best.test_accuracy is None:
            best = replace(best, test_accuracy=self.accuracy(state.load_model(Path(best.model_path)), self.test))
        return best.to_dict()
