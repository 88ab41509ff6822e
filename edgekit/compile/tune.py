"""MetaSchedule tuning into the target's database, paid once per kernel across models and runs.

    tune_model("zoo:fmnist-resnet", "host", trials=200)      # measured here
    tune_model(model, "rpi4", host="pi@board", trials=200)   # measured on the board, over SSH only

The database (edgekit.compile.tuning_db) is one per target and measuring device and grows
with every model tuned: a kernel whose anchor block already has a record (tuned for this
model or another one, with any fused epilogue) is not tuned again unless ``refine`` (or
``resume``) asks for it; the XGBoost cost model is saved with the database and reloaded, so
a later run starts warm.  After the search, every kernel with a record is measured against
edgekit's default schedule (edgekit.compile.tune_gain): the report gives the time gained,
and a record slower than the default is kept out of builds.

Records are appended as trials finish, so an interrupted run loses at most the batch in
flight; a run that wrote no valid record raises ``TuningError`` with the first errors
instead of returning quietly.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgekit.compile.tvm_env import import_tvm
from edgekit.errors import CompileError

# Re-exported: callers that know these names from edgekit.compile.tune keep working.
from edgekit.compile.tuning_db import (DATABASE_FILES, database_dir, device_fingerprint,  # noqa: F401
                                       find_database, local_fingerprint, open_database, tuning_root)

# The evolutionary search runs again before every batch; with MetaSchedule's defaults (512
# candidates, 4 generations) it took about 65 s a batch on this 2-core machine under load, far more
# than building and measuring the batch.  At edgekit's budgets (tens of trials per kernel)
# measured trials buy more than a wider search.
POPULATION = 128
GENERATIONS = 2


class TuningError(CompileError):
    """Tuning ran but produced no usable record (every trial failed to build or to run)."""

    exit_code = 16  # its own code: a build script may retry tuning but not a broken compile


@dataclass
class TaskReport:
    name: str
    weight: float
    trials: int  # trials recorded for this kernel's workload, earlier runs (and other models) included
    best_us: float | None  # MetaSchedule's best measurement of the record
    # "tuned" (searched in this run) | "in_database" (record existed: not tuned) | "minor" (left out:
    # among the kernels that share the last 10% of the time, see FOCUS_SHARE) | "untuned"
    status: str = "tuned"
    trials_this_run: int = 0
    gain: Any = None  # tune_gain.KernelGain, when the kernel has a record
    default_us: float | None = None  # edgekit's default schedule, measured (before the search, or by the gain)

    def to_dict(self) -> dict[str, Any]:
        gain = self.gain.to_dict() if self.gain is not None else {}
        return {"name": self.name, "weight": self.weight, "status": self.status, "trials": self.trials,
                "trials_this_run": self.trials_this_run, "best_us": self.best_us,
                "default_us": gain.get("default_us", self.default_us), "tuned_us": gain.get("tuned_us"),
                "applied": gain.get("applied", False), "gain_us": gain.get("gain_us", 0.0),
                "gain_error": gain.get("error")}


@dataclass
class TuningReport:
    target: str
    fingerprint: str
    database_dir: Path
    trials_requested: int
    trials_run: int  # candidates measured in this run
    trials_ok: int  # of those, how many built and ran
    tuning_s: float
    stopped_by: str  # "trials" | "time_budget" | "search_space" | "nothing_to_do"
    tasks: list[TaskReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # the first few distinct failures
    remote: str | None = None
    cost_model: dict[str, Any] = field(default_factory=dict)  # tuning_db.cost_model_stats
    knob_search: list = field(default_factory=list)  # knob_search.KnobResult per kernel searched

    @property
    def estimated_us(self) -> float | None:
        """Sum of weight x best kernel time: what the tuned kernels alone take per inference."""
        if any(t.best_us is None for t in self.tasks):
            return None
        return sum(t.weight * t.best_us for t in self.tasks)

    @property
    def kernel_gain_us(self) -> float:
        """Kernel time per inference the applied records save over edgekit's default schedules."""
        return sum(t.gain.gain_us for t in self.tasks if t.gain is not None)

    @property
    def default_kernels_us(self) -> float | None:
        """The same kernels under the default schedules (those with a record and a measurement)."""
        measured = [t.gain for t in self.tasks if t.gain is not None and t.gain.default_us is not None]
        return sum(g.weight * g.default_us for g in measured) if measured else None

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "fingerprint": self.fingerprint, "database_dir": str(self.database_dir),
                "trials_requested": self.trials_requested, "trials_run": self.trials_run,
                "trials_ok": self.trials_ok, "tuning_s": round(self.tuning_s, 2), "stopped_by": self.stopped_by,
                "estimated_kernels_us": self.estimated_us, "remote": self.remote,
                "default_kernels_us": self.default_kernels_us, "kernel_gain_us": round(self.kernel_gain_us, 3),
                "tasks_in_database": [t.name for t in self.tasks if t.status == "in_database"],
                "cost_model": self.cost_model, "tasks": [t.to_dict() for t in self.tasks], "errors": self.errors,
                "knob_search": [k.to_dict() for k in self.knob_search]}


# -------------------------------------------------------------------------------- tasks


def lower_for_tuning(mod, tvm_target, *, graph_optimized: bool = False):
    """Graph passes + fusion: the module whose PrimFuncs are the tuning tasks.

    ``graph_optimized``: ``mod`` already went through ``optimize_graph`` (compile_model runs
    the graph passes once and hands the result to both this and the build).
    """
    tvm = import_tvm()
    from edgekit.compile.build import lowering_passes, optimize_graph

    if not graph_optimized:
        mod = optimize_graph(mod, tvm_target)
    with tvm_target:
        return tvm.transform.Sequential(lowering_passes(tvm_target))(mod)


def extract_tasks(lowered, tvm_target) -> list:
    """One task per anchor block: kernels differing only in their fused epilogue are tuned once."""
    import_tvm()
    from tvm.s_tir import meta_schedule as ms

    from edgekit.compile.tuning_db import MODULE_EQUALITY

    return list(ms.relax_integration.extract_tasks(lowered, tvm_target, module_equality=MODULE_EQUALITY))


def _worth_tuning(task) -> bool:
    # Reshapes and other pure data movement have nothing to schedule.  Global average pooling
    # ("mean", "mean6", ...) takes well under a microsecond at these sizes, and TVM 0.27 wrote records
    # for it (int8 models) that its own JSONDatabase then refused to load, failing every later compile.
    return not any(word in task.task_name for word in ("reshape", "squeeze", "flatten")) \
        and not re.fullmatch(r"mean\d*", task.task_name)


# Tuning goes to the kernels that hold this share of the model's kernel time under the default
# schedules, slowest first: MobileNetV3-Small has 50 kernels, and the 20 smallest of them add up to
# less than a tenth of its time; a short budget spread over all of them bought nothing anywhere.
FOCUS_SHARE = 0.9
# What a batch costs (MobileNetV3-Small's convs on two cores): about 8 s for the evolutionary search
# to pick it, whatever its size, then about 1 s per candidate and core to build and measure.  The
# first round, one batch of every task, must leave most of a time budget to the search.
SECONDS_PER_BATCH = 8.0
SECONDS_PER_CANDIDATE_CORE = 1.0
FIRST_ROUND_SHARE = 0.3
SEARCHES = ("knobs", "metaschedule")
SEARCH_CHOICES = ("knobs+metaschedule", "knobs", "metaschedule")
# MetaSchedule's search is not started on less time than this: its first batch alone (search, build,
# measure) takes half a minute on two cores.
MIN_SEARCH_S = 30.0


def focus_tasks(tasks, default_us: dict[str, float | None], share: float = FOCUS_SHARE):
    """(the tasks to tune, the rest): slowest first (weight x default time) until ``share`` of the time.

    A task whose default schedule could not be measured is tuned (its time is unknown, not small).
    """
    unknown = [t for t in tasks if default_us.get(t.task_name) is None]
    known = sorted((t for t in tasks if default_us.get(t.task_name) is not None),
                   key=lambda t: -float(t.weight) * default_us[t.task_name])
    total = sum(float(t.weight) * default_us[t.task_name] for t in known)
    picked, covered = [], 0.0
    for task in known:
        if covered >= share * total:
            break
        picked.append(task)
        covered += float(task.weight) * default_us[task.task_name]
    chosen = {t.task_name for t in picked + unknown}
    return [t for t in tasks if t.task_name in chosen], [t for t in tasks if t.task_name not in chosen]


def _trials_per_iter(budget: int, n_tasks: int, time_budget_s: float | None = None, cores: int = 1) -> int:
    # Every task gets at least one batch before the gradient scheduler favours the slow ones, and
    # that first round must fit in a share of the time budget.
    per_iter = budget // max(1, 2 * n_tasks)
    if time_budget_s:
        per_task_s = time_budget_s * FIRST_ROUND_SHARE / max(1, n_tasks) - SECONDS_PER_BATCH
        per_iter = min(per_iter, int(per_task_s * cores / SECONDS_PER_CANDIDATE_CORE))
    return max(2, min(32, per_iter))


# -------------------------------------------------------------------------------- tuning


def tune_model(model, target="host", *, trials: int = 64, time_budget_s: float | None = None,
               resume: bool = False, refine: bool = False, host: str | None = None, remote=None,
               pool: str | None = None, pool_key: str | None = None, input_shapes=None, example_inputs=None,
               frontend: str = "auto",
               database_path: str | Path | None = None, trials_per_iter: int | None = None,
               threads: int | None = None, search: str = "knobs+metaschedule", log: Callable[[str], None] | None = None,
               **remote_kwargs) -> TuningReport:
    """Tune the kernels of ``model`` for ``target`` that the target's database lacks.

    ``trials``: candidates to measure in this run.  Kernels whose anchor block already has a
    record are reported as ``in_database`` and get no trials, unless ``refine`` (search them
    again) or ``resume`` (``trials`` is then the total for this model's kernels, trials
    already recorded included, so an interrupted run picks up where it stopped).
    ``search``: "knobs" measures the default rules' other tiles and loop orders for each kernel
    (edgekit.compile.knob_search, a minute or two for a 224x224 CNN) and records the winners;
    "metaschedule" is MetaSchedule's evolutionary search; "knobs+metaschedule" (the default) runs
    the knob search first and gives MetaSchedule what is left of the budget.  ``time_budget_s`` stops the search after the batch that crosses it.  ``host`` (or an
    open ``remote`` RemoteHost) measures on that device through an SSH tunnel to a TVM RPC
    server started there; records are then filed under the device's fingerprint.  ``pool`` (the tracker's
    HOST:PORT) measures on boards of ``pool_key`` (default: the target's name) borrowed from the pool, one
    candidate per board at once (edgekit.pool.tuning).
    """
    from edgekit.compile import tuning_db
    from edgekit.compile.build import check_toolchain, resolve_tvm_target
    from edgekit.compile.frontend import import_model
    from edgekit.compile.knob_search import search_knobs
    from edgekit.compile.tune_gain import DefaultSchedules, measure_default_times, measure_gains
    from edgekit.compile.tune_workers import Measurer, num_cores, worker_environment
    from edgekit.targets import load_target

    say = log or (lambda message: None)
    profile = load_target(target)
    check_toolchain(profile)
    if profile.kind != "cpu":
        raise CompileError(f"tuning is implemented for CPU targets; '{profile.name}' is {profile.kind}",
                           hint="GPU targets use TVM's default (DLight) schedules")
    if trials < 1:
        raise CompileError(f"--trials must be at least 1 (got {trials})")
    searches = set(search.split("+"))
    if not searches or not searches <= set(SEARCHES):
        raise CompileError(f"unknown search '{search}'", hint=f"use {', '.join(SEARCH_CHOICES)}")
    if host is None and remote is None and pool is None and not profile.is_native:
        raise CompileError(f"target '{profile.name}' cannot be measured on this machine",
                           hint="give --host user@board to measure candidates on the device over SSH")
    imported = import_model(model, input_shapes=input_shapes, example_inputs=example_inputs, frontend=frontend)
    tvm_target = resolve_tvm_target(profile)
    threads = threads or profile.measure.threads
    lowered = lower_for_tuning(imported.mod, tvm_target)
    tasks = [t for t in extract_tasks(lowered, tvm_target) if _worth_tuning(t)]
    if not tasks:
        raise CompileError("the model has no kernel to tune")

    session = None
    try:
        if pool is not None:
            from edgekit.pool.tuning import PoolTuningSession

            session = PoolTuningSession.open(pool, pool_key or profile.name, profile, log=say)
            fingerprint = tuning_db.device_fingerprint(session.facts, tvm_target)
        elif host is not None or remote is not None:
            from edgekit.compile.remote_tune import RemoteTuningSession

            session = RemoteTuningSession.open(remote or host, profile, log=say, **remote_kwargs)
            fingerprint = tuning_db.device_fingerprint(session.facts, tvm_target)
        else:
            fingerprint = tuning_db.local_fingerprint(tvm_target)
        db_path = Path(database_path) if database_path else tuning_db.database_dir(profile.name, fingerprint)
        database = tuning_db.open_database(db_path)
        tuning_db.write_meta(db_path, profile, tvm_target, fingerprint, session.facts if session else None)
        in_database = {t.task_name for t in tasks if tuning_db.best_record(database, t.dispatched[0]) is not None}
        to_tune = tasks if (resume or refine) else [t for t in tasks if t.task_name not in in_database]
        recorded = sum(tuning_db.trial_count(database, t.dispatched[0]) for t in to_tune)
        budget = trials - recorded if resume else trials
        say(f"tuning {len(to_tune)} of {len(tasks)} kernels of {imported.source} for {profile.name} "
            f"({'device ' + session.name if session else 'this machine'}, fingerprint {fingerprint}); "
            f"database {db_path}")
        skipped = [t.task_name for t in tasks if t not in to_tune]
        if skipped:
            say(f"already in the database (not tuned again; --refine to search them): {', '.join(skipped)}")
        if resume:
            say(f"resume: {recorded} trials already recorded, {max(budget, 0)} to go")

        measurer = Measurer(tvm_target, profile, session)
        started = time.monotonic()
        monitor = None
        model_stats: dict[str, Any] = {}
        minor: list = []
        default_us: dict[str, float | None] = {}
        knob_results: list = []
        defaults = DefaultSchedules(tvm_target)
        with worker_environment(threads):
            if to_tune and budget > 0:
                default_us = measure_default_times(to_tune, db_path, tvm_target, measurer, say, defaults)
                if "knobs" in searches:
                    # Every kernel, slowest first: a kernel's variants cost seconds, not a search.
                    deadline = None if time_budget_s is None else started + time_budget_s
                    knob_results = search_knobs(to_tune, database, tvm_target, measurer, defaults, default_us, say,
                                                deadline)
                to_tune, minor = focus_tasks(to_tune, default_us)
                if minor:
                    say(f"not searched by MetaSchedule, together under {100 * (1 - FOCUS_SHARE):.0f}% of the "
                        f"kernel time: {', '.join(t.task_name for t in minor)}")
                left_s = None if time_budget_s is None else time_budget_s - (time.monotonic() - started)
                if "metaschedule" not in searches:
                    pass
                elif left_s is None or left_s >= MIN_SEARCH_S or "knobs" not in searches:
                    left_s = None if left_s is None else max(1.0, left_s)  # alone, it gets at least a batch
                    per_iter = trials_per_iter or _trials_per_iter(budget, len(to_tune), left_s,
                                                                  num_cores(tvm_target))
                    monitor, model_stats = _search(to_tune, tvm_target, db_path, database, budget, per_iter,
                                                   measurer, left_s, say)
                else:
                    say(f"no time left for MetaSchedule's search ({max(left_s, 0):.0f} s of the budget)")
            elapsed = time.monotonic() - started
            gains = measure_gains(tasks, db_path, tvm_target, measurer, say, defaults)
        if monitor is None:
            out_of_time = time_budget_s is not None and time.monotonic() - started >= time_budget_s
            stopped = "time_budget" if knob_results or out_of_time else "nothing_to_do"
        elif monitor.out_of_time:
            stopped = "time_budget"
        else:
            stopped = "trials" if monitor.measured >= budget else "search_space"
        # Read back from disk: the database object the search wrote through no longer finds its own
        # records by workload (has_workload is False for them), so every count came out 0.
        report = _report(profile, fingerprint, db_path, tuning_db.open_database(db_path), tasks, to_tune,
                         in_database, {t.task_name for t in minor}, default_us, monitor, gains, trials, elapsed,
                         stopped, session, model_stats)
        report.knob_search = knob_results
        say(f"tuning done: {report.trials_run} trials ({report.trials_ok} ok) in {elapsed:.0f} s, stopped by "
            f"{stopped}; the records save {report.kernel_gain_us:.1f} us per inference over the default schedules")
        return report
    finally:
        if session is not None:
            session.close()


def _search(to_tune, tvm_target, db_path, database, budget, per_iter, measurer, time_budget_s, say):
    """MetaSchedule's search over ``to_tune``; the cost model is reloaded before and saved after."""
    from edgekit.compile import tuning_db
    from edgekit.compile.tune_progress import Monitor
    from edgekit.compile.tune_workers import num_cores

    monitor = Monitor(budget, time_budget_s, say, [t.task_name for t in to_tune])
    cost_model = tuning_db.cost_model(db_path, num_cores(tvm_target))
    if cost_model.loaded_samples:
        say(f"cost model reloaded from the database ({cost_model.loaded_samples} earlier measurements)")
    try:
        run_search(to_tune, tvm_target, db_path, database, budget, per_iter, monitor, measurer.builder,
                   measurer.runner, cost_model)
    finally:
        tuning_db.save_cost_model(cost_model, db_path)  # the measurements of an interrupted run count too
    if monitor.ok == 0:
        first = monitor.errors[0] if monitor.errors else "no candidate was generated"
        raise TuningError(f"tuning measured {monitor.measured} candidates and none built and ran; "
                          f"first error: {first[:600]}",
                          hint="run with -v for MetaSchedule's logs (in the database's logs/ folder)")
    return monitor, tuning_db.cost_model_stats(cost_model)


def run_search(tasks, tvm_target, db_path, database, budget, per_iter, monitor, builder, runner, cost_model):
    import_tvm()
    from tvm.s_tir import meta_schedule as ms

    from edgekit.compile.tune_progress import progress_lines, quiet_metaschedule
    from edgekit.compile.tune_workers import import_cpu_tensor_intrinsics, num_cores

    log_dir = db_path / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    import_cpu_tensor_intrinsics()
    with quiet_metaschedule():
        strategy = ms.search_strategy.EvolutionarySearch(population_size=POPULATION, genetic_num_iters=GENERATIONS,
                                                         init_min_unmeasured=32)
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            tasks, work_dir=str(log_dir), strategy=strategy, num_threads=num_cores(tvm_target))
        callbacks = [monitor.callback(ms.measure_callback.MeasureCallback.create("default"))]
        with progress_lines(monitor):
            try:
                ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(log_dir), max_trials_global=budget,
                              max_trials_per_task=budget, num_trials_per_iter=per_iter,
                              builder=monitor.builder(builder), runner=runner, database=database,
                              measure_callbacks=callbacks, task_scheduler="gradient", cost_model=cost_model)
            except Exception as exc:
                if not monitor.out_of_time:  # OutOfTime arrives wrapped by the FFI boundary
                    raise
                del exc


def _report(profile, fingerprint, db_path, database, tasks, to_tune, in_database, minor, default_us, monitor,
            gains, requested, elapsed, stopped, session, model_stats) -> TuningReport:
    from edgekit.compile import tuning_db

    gain_by_name = {g.name: g for g in gains}
    searched = {t.task_name: i for i, t in enumerate(to_tune)}
    reports = []
    for task in tasks:
        mod = task.dispatched[0]
        record = tuning_db.best_record(database, mod)
        ran = monitor.trials_by_task.get(searched[task.task_name], 0) if monitor and task.task_name in searched else 0
        status = "tuned" if ran else "in_database" if task.task_name in in_database else \
            "tuned" if record is not None else "minor" if task.task_name in minor else "untuned"
        reports.append(TaskReport(task.task_name, float(task.weight), tuning_db.trial_count(database, mod),
                                  tuning_db.record_us(record) if record is not None else None, status=status,
                                  trials_this_run=ran, gain=gain_by_name.get(task.task_name),
                                  default_us=default_us.get(task.task_name)))
    return TuningReport(target=profile.name, fingerprint=fingerprint, database_dir=db_path, trials_requested=requested,
                        trials_run=monitor.measured if monitor else 0, trials_ok=monitor.ok if monitor else 0,
                        tuning_s=elapsed, stopped_by=stopped, tasks=reports,
                        errors=(monitor.errors if monitor else [])[:5], remote=session.name if session else None,
                        cost_model=model_stats)


# -------------------------------------------------------------------------------- builds


def plan_for_build(mod, tvm_target, db_path: Path, *, graph_optimized: bool = False):
    """The records a build of ``mod`` applies (a tuning_db.BuildPlan: database, digest, kernels)."""
    from edgekit.compile.tuning_db import plan_build

    return plan_build(lower_for_tuning(mod, tvm_target, graph_optimized=graph_optimized), db_path, tvm_target)


def applied_records_digest(mod, tvm_target, db_path: Path) -> tuple[str | None, int]:
    """Hash of the records a build of ``mod`` would apply, and how many.

    Goes into the artifact id: the same model compiled before and after tuning (or after
    more tuning) gives a different artifact, while tuning *another* model does not.
    """
    plan = plan_for_build(mod, tvm_target, db_path)
    return plan.digest, len(plan.applied)
