"""The tuning database: one per target (and measuring device), shared by every model tuned for it.

    $EDGEKIT_CACHE/tuning/<target>/<fingerprint>/
        database_workload.json, database_tuning_record.json   MetaSchedule's JSON database
        database_tuning_record.rejected.json                   lines TVM wrote but cannot load
        cost_model.tar                                         the XGBoost cost model (warm start)
        slower_than_default.json                               records measured slower than edgekit's
                                                               default schedule: never applied
        kernel_times.json                                      measured kernel times (gain report cache)
        fingerprint.json, logs/

Workloads are matched by their anchor block (``module_equality="anchor-block"``): a conv2d
tuned with a ReLU epilogue serves the same conv2d followed by an add, in any model.  TVM
0.27's MetaScheduleApplyDatabase honours that (src/relax/transform/meta_schedule.cc: when
the record's workload is not structurally equal to the kernel it transfers the trace with
ScheduleUsingAnchorTrace), so a build gets a database holding exactly the records it
should apply (``plan_build``) and lets TVM apply them.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.compile.tvm_env import cache_dir, import_tvm
from edgekit.errors import CompileError

DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")
REJECTED_LINES_FILE = "database_tuning_record.rejected.json"
SLOWER_THAN_DEFAULT_FILE = "slower_than_default.json"
KERNEL_TIMES_FILE = "kernel_times.json"
MODULE_EQUALITY = "anchor-block"


# -------------------------------------------------------------------------------- where databases live


def tuning_root() -> Path:
    return cache_dir() / "tuning"


def local_fingerprint(tvm_target) -> str:
    """This machine as a measuring device: CPU model and the exact TVM target."""
    return _fingerprint({"cpu": cpu_model(), "machine": platform.machine(), "target": str(tvm_target)})


def device_fingerprint(facts: dict, tvm_target) -> str:
    """A remote board: what it says about its CPU, and the TVM target."""
    keep = {k: facts.get(k) for k in ("machine", "cpu_model", "cpu_count")}
    return _fingerprint({**keep, "target": str(tvm_target)})


def _fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "cpu model", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def database_dir(target_name: str, fingerprint: str) -> Path:
    return tuning_root() / target_name / fingerprint


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


def write_meta(db_path: Path, profile, tvm_target, fingerprint: str, device_facts: dict | None) -> None:
    meta = {"target": profile.name, "tvm_target": str(tvm_target), "fingerprint": fingerprint,
            "device": device_facts or {"cpu": cpu_model(), "machine": platform.machine(), "host": platform.node()}}
    (db_path / "fingerprint.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")


# -------------------------------------------------------------------------------- opening


def open_database(path: Path):
    """MetaSchedule's JSON database in ``path`` (created when missing), anchor-block matching."""
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
                                    path_tuning_record=str(records or path / DATABASE_FILES[1]),
                                    allow_missing=True, module_equality=MODULE_EQUALITY)


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
    with open(path / REJECTED_LINES_FILE, "a") as rejected:
        rejected.writelines(line + "\n" for line in lines if line in bad)
    tmp = path / (DATABASE_FILES[1] + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines if line not in bad))
    os.replace(tmp, path / DATABASE_FILES[1])


# -------------------------------------------------------------------------------- records


def normalized(func):
    """A fused PrimFunc as the IRModule MetaSchedule keys workloads by (its own normalize_mod)."""
    import_tvm()
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    return _normalize_mod(func)


def best_record(database, mod):
    """The fastest valid record for ``mod``'s workload (anchor block), or None."""
    if not database.has_workload(mod):
        return None
    records = database.get_top_k(database.commit_workload(mod), 1)
    return records[0] if records else None


def trial_count(database, mod) -> int:
    if not database.has_workload(mod):
        return 0
    return len(database.get_top_k(database.commit_workload(mod), 1 << 30))


def record_us(record) -> float:
    return sum(float(s) for s in record.run_secs) / len(record.run_secs) * 1e6


def record_key(record) -> str:
    """Names one record across processes: its workload's text and its trace."""
    digest = hashlib.sha256(record.workload.mod.script(show_meta=False).encode())
    digest.update(json.dumps(record.trace.as_json(), sort_keys=True, default=str).encode())
    return digest.hexdigest()[:20]


def module_key(mod) -> str:
    """Names one (scheduled or not) kernel module across processes."""
    return hashlib.sha256(mod.script(show_meta=False).encode()).hexdigest()[:20]


# -------------------------------------------------------------------------------- JSON side files


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def slower_than_default(db_path: Path) -> dict[str, dict]:
    """record key -> what was measured, for the records a build must not apply."""
    return read_json(db_path / SLOWER_THAN_DEFAULT_FILE)


# -------------------------------------------------------------------------------- what a build applies


@dataclass
class BuildPlan:
    """The records a build of one model applies, as a database MetaScheduleApplyDatabase reads."""

    database_dir: Path
    database: object | None  # a MetaSchedule MemoryDatabase, None when nothing applies
    digest: str | None  # goes into the artifact id
    applied: list[str] = field(default_factory=list)  # kernel names
    kept_out: list[str] = field(default_factory=list)  # kernels whose record is slower than default
    not_transferable: list[str] = field(default_factory=list)  # kernels sharing an anchor whose trace fails on one


def plan_build(lowered, db_path: Path, tvm_target=None) -> BuildPlan:
    """Which record each kernel of ``lowered`` (after fusion) gets.

    The best record of each kernel's anchor block, except those measured slower than the
    default schedule (``slower_than_default.json``).  The result is a MemoryDatabase with
    anchor-block equality holding only those records: every kernel sharing an anchor gets
    the same best record, so one decision per anchor is exact.  With ``tvm_target``, a record
    whose trace does not replay on one of the kernels sharing its anchor (a knob record of a
    plain conv on its residual-add twin failed inside TVM and took the whole build with it)
    is kept out for all of them: those kernels keep the default schedule.
    """
    import_tvm()
    from tvm import tirx
    from tvm.s_tir import meta_schedule as ms

    database = open_database(db_path)
    slower = slower_than_default(db_path)
    chosen = ms.database.MemoryDatabase(module_equality=MODULE_EQUALITY)
    digest = hashlib.sha256()
    plan = BuildPlan(database_dir=db_path, database=None, digest=None)
    kernels = []  # (name, normalized kernel, record, key)
    for gvar, func in sorted(lowered.functions_items(), key=lambda item: item[0].name_hint):
        if not isinstance(func, tirx.PrimFunc):
            continue
        mod = normalized(func)
        record = best_record(database, mod)
        if record is not None:
            kernels.append((gvar.name_hint, mod, record, record_key(record)))
    untransferable = set()
    if tvm_target is not None:
        from edgekit.compile.tune_gain import apply_record

        for _, mod, record, key in kernels:
            if key not in slower and key not in untransferable:
                try:
                    apply_record(mod, record, tvm_target)
                except Exception:  # noqa: BLE001  (TVM's trace replay refusing this kernel)
                    untransferable.add(key)
    for name, _, record, key in kernels:
        if key in slower or key in untransferable:
            (plan.kept_out if key in slower else plan.not_transferable).append(name)
            digest.update(f"kept out {name} {key}".encode())
            continue
        workload = chosen.commit_workload(record.workload.mod)
        chosen.commit_tuning_record(ms.database.TuningRecord(record.trace, workload, record.run_secs,
                                                             record.target, record.args_info))
        plan.applied.append(name)
        digest.update(f"{name} {key}".encode())
    if plan.applied:
        plan.database = chosen
        plan.digest = digest.hexdigest()
    elif plan.kept_out or plan.not_transferable:
        plan.digest = digest.hexdigest()  # the id still says the database was consulted
    return plan


# -------------------------------------------------------------------------------- the cost model


COST_MODEL_FILE = "cost_model.tar"


def cost_model(db_path: Path, num_cores: int):
    """The target's XGBoost cost model: reloaded from ``cost_model.tar`` when one was saved.

    XGBModel.predict returns uniform random scores until it holds ``num_warmup_samples``
    (100) measurements *and* has a trained booster (cost_model/xgb_model.py): that is
    MetaSchedule's cold start.  ``load`` restores the booster and every earlier measurement,
    and a reloaded model with a booster gets no warm-up threshold at all, so the first
    batch of a new run is already ranked by the model.  The search still samples a fresh
    random population every batch (init_min_unmeasured), so exploration does not stop.
    """
    import_tvm()
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.cost_model import XGBModel

    @derived_object
    class CountingXGBModel(XGBModel._cls):
        """XGBModel that counts how many predictions were random (cold) and model-based."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.loaded_samples = 0
            self.random_predictions = 0
            self.model_predictions = 0

        def predict(self, context, candidates):
            if self.data_size >= self.num_warmup_samples and self.booster is not None:
                self.model_predictions += len(candidates)
            else:
                self.random_predictions += len(candidates)
            return super().predict(context, candidates)

    path = db_path / COST_MODEL_FILE
    model = CountingXGBModel(num_tuning_cores=num_cores)
    if path.is_file():
        try:
            with warnings.catch_warnings():  # xgboost guesses the format of MetaSchedule's "model.bin"
                warnings.simplefilter("ignore")
                model.load(str(path))
        except Exception:  # a damaged or booster-less file: start cold rather than fail
            model = CountingXGBModel(num_tuning_cores=num_cores)
        else:
            model.loaded_samples = model.data_size
            if model.booster is not None:
                model.num_warmup_samples = 0
    return model


def save_cost_model(model, db_path: Path) -> bool:
    """Keep the model for the next run; XGBModel.load cannot read a file saved before training."""
    if model.booster is None:
        return False
    tmp = db_path / (COST_MODEL_FILE + ".tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save(str(tmp))
        os.replace(tmp, db_path / COST_MODEL_FILE)
    except Exception:  # only a cache: the records are already safe, the next run starts colder
        tmp.unlink(missing_ok=True)
        return False
    return True


def cost_model_stats(model) -> dict:
    return {"loaded_samples": model.loaded_samples, "samples": model.data_size,
            "random_predictions": model.random_predictions, "model_predictions": model.model_predictions}


# -------------------------------------------------------------------------------- for caches of measurements


def schedule_state(profile, tvm_target=None) -> str:
    """Names the schedules a build for ``profile`` gets today: changes when a tuning run adds or
    keeps out records, or when edgekit's default schedules change.

    For caches of measured latency (the optimize loop's latency table): a row measured before
    ``edgekit tune`` ran is not what a build ships after it.
    """
    from edgekit.__about__ import __version__
    from edgekit.compile import PIPELINE_VERSION

    state: dict = {"edgekit": __version__, "pipeline": PIPELINE_VERSION, "database": None}
    path = find_database(profile, tvm_target) if profile.kind == "cpu" else None
    if path is not None:
        records = path / DATABASE_FILES[1]
        slower = path / SLOWER_THAN_DEFAULT_FILE
        state["database"] = {"path": str(path), "records_bytes": records.stat().st_size,
                             "slower": read_json(slower) if slower.is_file() else {}}
    return _fingerprint(state)
