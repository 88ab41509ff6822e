"""MetaSchedule tuning with a persistent database per target (and per device fingerprint).

    tune_model("zoo:fmnist-resnet", "host", trials=200)      # measured here
    tune_model(model, "rpi4", host="pi@board", trials=200)   # measured on the board, over SSH only

Records go to ``$EDGEKIT_CACHE/tuning/<target>/<fingerprint>/`` (MetaSchedule's JSON
database: one workload file, one record file, appended as trials finish, so an
interrupted run loses at most the batch in flight).  ``compile_model`` for that target
finds the database by itself and applies its best schedules (see ``find_database``).

Traps this module works around (DESIGN.md section 8):
- the stock builder's workers import ``tvm.s_tir.tensor_intrin`` (about 30 s here) against a
  30 s timeout, so every trial times out and tuning "finishes" with nothing: our build
  function skips that import, the timeout is longer, and a run that wrote no valid record
  raises ``TuningError`` with the first errors instead of returning quietly;
- every builder/runner worker is a fresh ``python -m tvm.exec.popen_worker`` and tvm_ffi
  imports torch when it can (2-3 s of a worker's start on this machine): the workers get a
  ``PYTHONPATH`` entry where ``import torch`` fails at once (they never need torch).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgekit.compile.tvm_env import cache_dir, import_tvm
from edgekit.errors import CompileError

# Seconds one candidate may take to compile in a builder worker (the worker's own start included).
BUILD_TIMEOUT_S = 180.0
RUN_TIMEOUT_S = 60.0
DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")
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
    trials: int  # trials recorded for this task, earlier runs included
    best_us: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "weight": self.weight, "trials": self.trials, "best_us": self.best_us}


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

    @property
    def estimated_us(self) -> float | None:
        """Sum of weight x best kernel time: what the tuned kernels alone take per inference."""
        if any(t.best_us is None for t in self.tasks):
            return None
        return sum(t.weight * t.best_us for t in self.tasks)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "fingerprint": self.fingerprint, "database_dir": str(self.database_dir),
                "trials_requested": self.trials_requested, "trials_run": self.trials_run,
                "trials_ok": self.trials_ok, "tuning_s": round(self.tuning_s, 2), "stopped_by": self.stopped_by,
                "estimated_kernels_us": self.estimated_us, "remote": self.remote,
                "tasks": [t.to_dict() for t in self.tasks], "errors": self.errors}


# -------------------------------------------------------------------------------- where records live


def tuning_root() -> Path:
    return cache_dir() / "tuning"


def local_fingerprint(tvm_target) -> str:
    """This machine as a measuring device: CPU model and the exact TVM target."""
    return _fingerprint({"cpu": _cpu_model(), "machine": platform.machine(), "target": str(tvm_target)})


def device_fingerprint(facts: dict[str, Any], tvm_target) -> str:
    """A remote board: what it says about its CPU, and the TVM target."""
    keep = {k: facts.get(k) for k in ("machine", "cpu_model", "cpu_count")}
    return _fingerprint({**keep, "target": str(tvm_target)})


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "cpu model", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def database_dir(target_name: str, fingerprint: str) -> Path:
    return tuning_root() / target_name / fingerprint


def open_database(path: Path):
    """MetaSchedule's JSON database in ``path`` (created when missing)."""
    import_tvm()

    path.mkdir(parents=True, exist_ok=True)
    try:
        return _json_database(path)
    except Exception:
        # TVM 0.27 can commit a record its own loader then rejects, and one bad line makes the
        # whole database unreadable (every later compile of the target would fail): set such
        # lines aside in database_tuning_record.rejected.json and load the rest.
        _set_aside_unloadable_records(path)
        return _json_database(path)


def _json_database(path: Path, records: Path | None = None):
    from tvm.s_tir import meta_schedule as ms

    return ms.database.JSONDatabase(path_workload=str(path / DATABASE_FILES[0]),
                                    path_tuning_record=str(records or path / DATABASE_FILES[1]), allow_missing=True)


def _set_aside_unloadable_records(path: Path) -> None:
    import tempfile

    lines = (path / DATABASE_FILES[1]).read_text().splitlines()
    with tempfile.TemporaryDirectory() as scratch:
        probe = Path(scratch) / "records.json"

        def loads(chunk: list[str]) -> bool:
            probe.write_text("".join(line + "\n" for line in chunk))
            try:
                _json_database(path, probe)
                return True
            except Exception:
                return False

        def bad_lines(chunk: list[str]) -> list[str]:  # bisect: few bad lines among many
            if not chunk or loads(chunk):
                return []
            if len(chunk) == 1:
                return chunk
            middle = len(chunk) // 2
            return bad_lines(chunk[:middle]) + bad_lines(chunk[middle:])

        bad = set(bad_lines(lines))
    if not bad:
        raise CompileError(f"the tuning database {path} cannot be read", hint=f"remove {path} and tune again")
    with open(path / "database_tuning_record.rejected.json", "a") as rejected:
        rejected.writelines(line + "\n" for line in lines if line in bad)
    tmp = path / (DATABASE_FILES[1] + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines if line not in bad))
    os.replace(tmp, path / DATABASE_FILES[1])


def find_database(profile, tvm_target=None) -> Path | None:
    """The database ``compile_model`` applies for ``profile``, or None.

    For a target this machine runs itself, this machine's fingerprint; otherwise the most
    recently tuned device of that target (a fleet of one board model shares its records).
    """
    root = tuning_root() / profile.name
    if not root.is_dir():
        return None
    candidates = [d for d in root.iterdir() if (d / DATABASE_FILES[1]).is_file()
                  and (d / DATABASE_FILES[1]).stat().st_size > 0]
    if not candidates:
        return None
    if tvm_target is not None and profile.is_native:
        mine = root / local_fingerprint(tvm_target)
        if mine in candidates:
            return mine
    return max(candidates, key=lambda d: (d / DATABASE_FILES[1]).stat().st_mtime)


# -------------------------------------------------------------------------------- tasks


def lower_for_tuning(mod, tvm_target):
    """Graph passes + fusion: the module whose PrimFuncs are the tuning tasks."""
    tvm = import_tvm()
    from edgekit.compile.build import lowering_passes, optimize_graph

    mod = optimize_graph(mod, tvm_target)
    with tvm_target:
        return tvm.transform.Sequential(lowering_passes(tvm_target))(mod)


def extract_tasks(lowered, tvm_target) -> list:
    import_tvm()
    from tvm.s_tir import meta_schedule as ms

    return list(ms.relax_integration.extract_tasks(lowered, tvm_target))


def applied_records_digest(mod, tvm_target, db_path: Path) -> tuple[str | None, int]:
    """Hash of the records a build of ``mod`` would apply from the database, and how many.

    Goes into the artifact id: the same model compiled before and after tuning (or after
    more tuning) gives a different artifact, while tuning *another* model does not.
    """
    import_tvm()
    lowered = lower_for_tuning(mod, tvm_target)
    database = open_database(db_path)
    digest = hashlib.sha256()
    applied = 0
    for task in extract_tasks(lowered, tvm_target):
        record = database.query_tuning_record(task.dispatched[0], tvm_target, task.task_name)
        if record is None:
            continue
        applied += 1
        digest.update(task.task_name.encode())
        digest.update(json.dumps(record.trace.as_json(), sort_keys=True, default=str).encode())
    return (digest.hexdigest() if applied else None), applied


# -------------------------------------------------------------------------------- worker functions
# Pickled by reference into MetaSchedule's popen workers: module level, no torch import.


def build_candidate(mod, target, _params):
    """``default_build`` minus ``import tvm.s_tir.tensor_intrin`` (30 s here, not needed on CPU)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def export_shared(mod, compiler: str | None = None) -> str:
    """A ready-to-load .so (a board has no compiler to link the stock .tar export)."""
    import tempfile

    import tvm.support.cc as cc

    path = os.path.join(tempfile.mkdtemp(prefix="edgekit-ms-"), "candidate.so")
    kwargs = {"fcompile": cc.cross_compiler(compiler)} if compiler else {}
    mod.export_library(path, **kwargs)
    return path


# -------------------------------------------------------------------------------- tuning


def tune_model(model, target="host", *, trials: int = 64, time_budget_s: float | None = None,
               resume: bool = False, host: str | None = None, remote=None, input_shapes=None,
               example_inputs=None, frontend: str = "auto", database_path: str | Path | None = None,
               trials_per_iter: int | None = None, threads: int | None = None,
               log: Callable[[str], None] | None = None, **remote_kwargs) -> TuningReport:
    """Tune the kernels of ``model`` for ``target``; records go to the target's database.

    ``trials``: candidates to measure in this run; with ``resume``, the total for this model,
    trials already in the database included (so an interrupted run picks up where it
    stopped).  ``time_budget_s`` stops the search after the batch that crosses it.
    ``host`` (or an open ``remote`` RemoteHost) measures on that device through an SSH
    tunnel to a TVM RPC server started there; records are then filed under the device's
    fingerprint.
    """
    from edgekit.compile.build import check_toolchain, resolve_tvm_target
    from edgekit.compile.frontend import import_model
    from edgekit.targets import load_target

    say = log or (lambda message: None)
    profile = load_target(target)
    check_toolchain(profile)
    if profile.kind != "cpu":
        raise CompileError(f"tuning is implemented for CPU targets; '{profile.name}' is {profile.kind}",
                           hint="GPU targets use TVM's default (DLight) schedules")
    if trials < 1:
        raise CompileError(f"--trials must be at least 1 (got {trials})")
    if host is None and remote is None and not profile.is_native:
        raise CompileError(f"target '{profile.name}' cannot be measured on this machine",
                           hint="give --host user@board to measure candidates on the device over SSH")
    imported = import_model(model, input_shapes=input_shapes, example_inputs=example_inputs, frontend=frontend)
    tvm_target = resolve_tvm_target(profile)
    threads = threads or profile.measure.threads
    lowered = lower_for_tuning(imported.mod, tvm_target)
    extracted = [t for t in extract_tasks(lowered, tvm_target) if _worth_tuning(t)]
    if not extracted:
        raise CompileError("the model has no kernel to tune")

    session = None
    try:
        if host is not None or remote is not None:
            from edgekit.compile.remote_tune import RemoteTuningSession

            session = RemoteTuningSession.open(remote or host, profile, log=say, **remote_kwargs)
            fingerprint = device_fingerprint(session.facts, tvm_target)
        else:
            fingerprint = local_fingerprint(tvm_target)
        db_path = Path(database_path) if database_path else database_dir(profile.name, fingerprint)
        database = open_database(db_path)
        _write_meta(db_path, profile, tvm_target, fingerprint, session)
        done_before = {t.task_name: _trial_count(database, t, tvm_target) for t in extracted}
        budget = trials - sum(done_before.values()) if resume else trials
        say(f"tuning {len(extracted)} kernels of {imported.source} for {profile.name} "
            f"({'device ' + session.name if session else 'this machine'}, fingerprint {fingerprint}); "
            f"database {db_path}")
        if resume:
            say(f"resume: {sum(done_before.values())} trials already recorded, {max(budget, 0)} to go")
        started = time.monotonic()
        if budget <= 0:
            return _report(profile, fingerprint, db_path, database, extracted, tvm_target, trials, 0, 0,
                           0.0, "nothing_to_do", [], session)
        monitor = _Monitor(budget, time_budget_s, say, [t.task_name for t in extracted])
        per_iter = trials_per_iter or _trials_per_iter(budget, len(extracted))
        _run_search(extracted, tvm_target, db_path, database, budget, per_iter, monitor, threads, session, profile)
        elapsed = time.monotonic() - started
        if monitor.ok == 0:
            first = monitor.errors[0] if monitor.errors else "no candidate was generated"
            raise TuningError(f"tuning measured {monitor.measured} candidates and none built and ran; "
                              f"first error: {first[:600]}",
                              hint="run with -v for MetaSchedule's logs (in the database's logs/ folder)")
        stopped = ("time_budget" if monitor.out_of_time else
                   "trials" if monitor.measured >= budget else "search_space")
        report = _report(profile, fingerprint, db_path, database, extracted, tvm_target, trials, monitor.measured,
                         monitor.ok, elapsed, stopped, monitor.errors, session)
        say(f"tuning done: {monitor.measured} trials ({monitor.ok} ok) in {elapsed:.0f} s, stopped by {stopped}; "
            f"tuned kernels take about {report.estimated_us or float('nan'):.1f} us per inference")
        return report
    finally:
        if session is not None:
            session.close()


def _worth_tuning(task) -> bool:
    # Reshapes and other pure data movement have nothing to schedule.  Global average pooling
    # ("mean") takes well under a microsecond at these sizes, and TVM 0.27 wrote records for it
    # (int8 models) that its own JSONDatabase then refused to load, failing every later compile.
    return not any(word in task.task_name for word in ("reshape", "squeeze", "flatten")) \
        and task.task_name != "mean"


def _trials_per_iter(budget: int, n_tasks: int) -> int:
    # Every task gets at least one batch before the gradient scheduler favours the slow ones.
    return max(2, min(32, budget // max(1, 2 * n_tasks)))


def _trial_count(database, task, tvm_target) -> int:
    mod = task.dispatched[0]
    if not database.has_workload(mod):
        return 0
    workload = database.commit_workload(mod)
    return len(database.get_top_k(workload, 1 << 30))


def _write_meta(db_path: Path, profile, tvm_target, fingerprint, session) -> None:
    meta = {"target": profile.name, "tvm_target": str(tvm_target), "fingerprint": fingerprint,
            "device": session.facts if session else {"cpu": _cpu_model(), "machine": platform.machine(),
                                                      "host": platform.node()}}
    (db_path / "fingerprint.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")


def _report(profile, fingerprint, db_path, database, extracted, tvm_target, requested, run, ok, elapsed, stopped,
            errors, session) -> TuningReport:
    tasks = []
    for task in extracted:
        mod = task.dispatched[0]
        best = None
        count = 0
        if database.has_workload(mod):
            records = database.get_top_k(database.commit_workload(mod), 1 << 30)
            count = len(records)
            if records:
                best = min(float(sum(float(s) for s in r.run_secs) / len(r.run_secs)) for r in records) * 1e6
        tasks.append(TaskReport(task.task_name, float(task.weight), count, best))
    return TuningReport(target=profile.name, fingerprint=fingerprint, database_dir=db_path, trials_requested=requested,
                        trials_run=run, trials_ok=ok, tuning_s=elapsed, stopped_by=stopped, tasks=tasks,
                        errors=errors[:5], remote=session.name if session else None)


class _OutOfTime(Exception):
    pass


class _Monitor:
    """Progress lines, the time budget, and the first errors (MetaSchedule only logs them)."""

    def __init__(self, budget: int, time_budget_s: float | None, say, names):
        self.budget = budget
        self.deadline = time.monotonic() + time_budget_s if time_budget_s else None
        self.say = say
        self.names = names
        self.started = time.monotonic()
        self.measured = 0
        self.ok = 0
        self.errors: list[str] = []
        self.best_us: dict[int, float] = {}
        self.out_of_time = False

    def sent(self, count: int, task: str) -> None:
        self.sent_total = getattr(self, "sent_total", 0) + count
        self.say(f"  [{time.monotonic() - self.started:6.0f} s] building {count} candidates for {task[:48]} "
                 f"({self.sent_total}/{self.budget} sent, {self.measured} measured)")

    def apply(self, scheduler, task_id, candidates, builder_results, runner_results) -> None:
        for built, ran in zip(builder_results, runner_results):
            self.measured += 1
            error = built.error_msg or ran.error_msg
            if error:
                text = str(error).strip().splitlines()
                line = next((l for l in reversed(text) if l.strip()), str(error))[:400]
                if line not in self.errors and len(self.errors) < 20:
                    self.errors.append(line)
                continue
            self.ok += 1
            us = sum(float(s) for s in ran.run_secs) / len(ran.run_secs) * 1e6
            self.best_us[task_id] = min(us, self.best_us.get(task_id, us))
        elapsed = time.monotonic() - self.started
        best = self.best_us.get(task_id)
        self.say(f"  [{elapsed:6.0f} s] trial {self.measured}/{self.budget} ({self.ok} ok)  "
                 f"{self.names[task_id][:48]:48s} best {best:.1f} us" if best is not None else
                 f"  [{elapsed:6.0f} s] trial {self.measured}/{self.budget} ({self.ok} ok)  "
                 f"{self.names[task_id][:48]:48s} no valid candidate yet")
        if self.deadline is not None and time.monotonic() >= self.deadline and not self.out_of_time:
            self.out_of_time = True
            self.say("  time budget reached: stopping (every measured record is already in the database)")
            # The scheduler has no "stop" call (terminating its tasks from here trips its own checks),
            # so leave its loop by an exception; _run_search recognises it.
            raise _OutOfTime()


def _run_search(extracted, tvm_target, db_path, database, budget, per_iter, monitor, threads, session, profile):
    import_tvm()
    from tvm.s_tir import meta_schedule as ms

    from tvm.s_tir.meta_schedule.measure_callback.measure_callback import _PyMeasureCallback

    log_dir = db_path / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    _import_cpu_tensor_intrinsics()
    with _worker_environment(threads), _quiet_metaschedule():
        import functools

        strategy = ms.search_strategy.EvolutionarySearch(population_size=POPULATION, genetic_num_iters=GENERATIONS,
                                                         init_min_unmeasured=32)
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            extracted, work_dir=str(log_dir), strategy=strategy, num_threads=_num_cores(tvm_target))

        compiler = profile.cross_compiler
        builder = ms.builder.LocalBuilder(
            max_workers=_num_cores(tvm_target) if session is None else max(1, os.cpu_count() or 1),
            timeout_sec=BUILD_TIMEOUT_S, f_build=build_candidate,
            f_export=functools.partial(export_shared, compiler=compiler) if session else None)
        runner = session.runner() if session else ms.runner.LocalRunner(
            timeout_sec=RUN_TIMEOUT_S, evaluator_config=ms.runner.EvaluatorConfig(
                number=5, repeat=3, min_repeat_ms=50, enable_cpu_cache_flush=False))
        callbacks = [*ms.measure_callback.MeasureCallback.create("default"), _PyMeasureCallback(monitor.apply)]
        with _progress_lines(monitor):
            try:
                ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(log_dir), max_trials_global=budget,
                              max_trials_per_task=budget, num_trials_per_iter=per_iter, builder=builder,
                              runner=runner, database=database, measure_callbacks=callbacks,
                              task_scheduler="gradient", cost_model="xgb")
            except Exception as exc:
                if not monitor.out_of_time:  # _OutOfTime arrives wrapped by the FFI boundary
                    raise
                del exc


def _import_cpu_tensor_intrinsics() -> None:
    """Register the CPU tensor intrinsics only.

    Every ``TuneContext`` imports ``tvm.s_tir.tensor_intrin``, whose CUDA part builds
    hundreds of TIR functions: 30 s to 2 min on this machine, for a CPU target that never
    uses them.  A package object that loads just the x86 and Arm submodules (1-5 s) takes
    its place when it was not imported yet.
    """
    import importlib
    import importlib.util
    import sys
    import types

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    package = types.ModuleType(name, "CPU tensor intrinsics only (edgekit.compile.tune)")
    package.__path__ = list(spec.submodule_search_locations)
    package.__package__ = name
    sys.modules[name] = package
    for sub in ("x86", "arm_cpu"):
        setattr(package, sub, importlib.import_module(f"{name}.{sub}"))


def _num_cores(tvm_target) -> int:
    try:
        return int(tvm_target.attrs["num-cores"])
    except (KeyError, TypeError, ValueError):
        return os.cpu_count() or 1


class _worker_environment:
    """Environment the popen workers inherit: no torch, and the thread count measured."""

    def __init__(self, threads: int):
        self.threads = threads
        self.saved: dict[str, str | None] = {}

    def __enter__(self):
        blocker = cache_dir() / "no-torch"
        stub = blocker / "torch" / "__init__.py"
        if not stub.exists():
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text('raise ImportError("edgekit tuning workers do not load torch")\n')
        path = os.pathsep.join(p for p in (str(blocker), os.environ.get("PYTHONPATH")) if p)
        for key, value in (("PYTHONPATH", path), ("TVM_NUM_THREADS", str(self.threads))):
            self.saved[key] = os.environ.get(key)
            os.environ[key] = value
        return self

    def __exit__(self, *exc):
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        return False


class _quiet_metaschedule:
    """MetaSchedule prints its whole task table after every batch: keep that in the log files.

    Its console handler takes the level the package logger has when the tuning contexts are
    made, so WARNING is set just for that moment (``-v`` keeps everything); the files in the
    database's logs/ folder still get every line.
    """

    def __enter__(self):
        import logging

        self.logger = logging.getLogger("tvm.s_tir.meta_schedule")
        self.level = self.logger.level
        if not logging.getLogger("edgekit").isEnabledFor(logging.DEBUG):
            self.logger.setLevel(logging.WARNING)
        return self

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)
        return False


class _progress_lines:
    """Turns the scheduler's "Sending N sample(s) to builder" log lines into edgekit progress lines.

    Added after the contexts are made: MetaSchedule's logging setup (dictConfig) replaces the
    package logger's handlers.
    """

    def __init__(self, monitor):
        import logging
        import re

        monitor_ref = monitor

        class Handler(logging.Handler):
            task = "?"

            def emit(self, record):
                message = record.getMessage()
                picked = re.search(r"TaskScheduler picks Task #\d+: (\S+)", message)
                if picked:
                    self.task = picked.group(1)
                sending = re.search(r"Sending (\d+) sample\(s\) to builder", message)
                if sending:
                    monitor_ref.sent(int(sending.group(1)), self.task)

        self.handler = Handler(logging.INFO)
        self.logger = logging.getLogger("tvm.s_tir.meta_schedule")

    def __enter__(self):
        import logging

        self.level = self.logger.level
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)
        return False

