"""MetaSchedule tuning on this machine: records written, reused by compile and by other models,
the cost model warm-started, the gain over the default schedules measured, resumable, time budget, CLI.

Real tuning (real builder and runner workers, real measurements) with a tiny trial budget on
one-conv models; the real budgets live in tools/bench_speed.py.
"""

from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.slow  # a few trials still cost a minute on two shared cores

TRIALS = 4


def _conv_model():
    import torch

    class ConvNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(8, 16, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.conv(x))

    torch.manual_seed(0)
    return ConvNet().eval()


def _conv_other_epilogue_model():
    """The same 3x3 conv as _conv_model, another fused epilogue (sigmoid), and a new 1x1 conv head."""
    import torch

    class OtherHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(8, 16, 3, padding=1)
            self.head = torch.nn.Conv2d(16, 4, 1)

        def forward(self, x):
            return self.head(torch.sigmoid(self.conv(x)))

    torch.manual_seed(1)
    return OtherHead().eval()


SHAPE = (1, 8, 16, 16)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    import os

    path = tmp_path_factory.mktemp("edgekit-cache")
    saved = os.environ.get("EDGEKIT_CACHE")
    os.environ["EDGEKIT_CACHE"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("EDGEKIT_CACHE", None)
    else:
        os.environ["EDGEKIT_CACHE"] = saved


@pytest.fixture(scope="module")
def tuned(cache):
    from edgekit.compile.tune import tune_model

    lines = []
    # MetaSchedule's search (this module's subject; the knob search is tests/test_knob_search.py): its
    # records transfer to a conv with another epilogue, knob records do not yet (they are kept out there).
    report = tune_model(_conv_model(), "host", trials=TRIALS, input_shapes=[SHAPE], trials_per_iter=2,
                        search="metaschedule", log=lines.append)
    return report, lines


def test_tuning_writes_records_under_the_target_and_fingerprint(tuned, cache):
    report, lines = tuned
    assert report.trials_run >= TRIALS and report.trials_ok > 0, report.errors
    assert report.database_dir.parent == cache / "tuning" / "host"
    records = (report.database_dir / "database_tuning_record.json").read_text().splitlines()
    assert len(records) >= report.trials_ok
    assert all(t.trials > 0 for t in report.tasks if "conv2d" in t.name)
    assert all(t.status == "tuned" for t in report.tasks if t.trials_this_run)
    assert (report.database_dir / "cost_model.tar").is_file(), "the cost model is kept with the database"
    meta = json.loads((report.database_dir / "fingerprint.json").read_text())
    assert meta["fingerprint"] == report.fingerprint and meta["target"] == "host"
    assert any("trial" in line for line in lines), "progress is shown"


def test_compile_reuses_the_database_without_tuning(tuned, tmp_path):
    """A compile after tuning consults the database and tunes nothing.  Four trials rarely beat the
    default schedules, so the record is usually kept out; a copy of the database that no gain
    measurement vetoed shows that a build applies the record and stays exact."""
    import shutil

    from edgekit.compile import compile_model
    from edgekit.run import run_artifact

    report, _ = tuned
    records_before = (report.database_dir / "database_tuning_record.json").read_text()
    untuned = compile_model(_conv_model(), "host", input_shapes=[SHAPE], out_dir=tmp_path, tuning=False)
    started = time.monotonic()
    tuned_artifact = compile_model(_conv_model(), "host", input_shapes=[SHAPE], out_dir=tmp_path)
    compile_s = time.monotonic() - started
    assert compile_s < 60, "a compile after tuning must not tune again"
    assert (report.database_dir / "database_tuning_record.json").read_text() == records_before
    assert tuned_artifact.artifact_id != untuned.artifact_id, "the records consulted are part of the id"
    tuning = tuned_artifact.manifest["tuning"]
    conv = next(t for t in report.tasks if "conv2d" in t.name)
    if conv.gain.applied:
        assert conv.name in tuned_artifact.manifest["schedules"]["tuned"]
    else:
        assert conv.name in tuning["kept_out_slower_than_default"], tuning
    assert tuning["kernels_tuned"] + len(tuning["kept_out_slower_than_default"]) >= 1
    again = compile_model(_conv_model(), "host", input_shapes=[SHAPE], out_dir=tmp_path)
    assert again.artifact_id == tuned_artifact.artifact_id

    unvetoed = tmp_path / "db-unvetoed"
    shutil.copytree(report.database_dir, unvetoed)
    (unvetoed / "slower_than_default.json").unlink(missing_ok=True)
    applied = compile_model(_conv_model(), "host", input_shapes=[SHAPE], out_dir=tmp_path, tuning=unvetoed)
    assert conv.name in applied.manifest["schedules"]["tuned"], applied.manifest["schedules"]
    assert applied.manifest["tuning"]["kernels_tuned"] >= 1
    for artifact in (applied, tuned_artifact, untuned):
        assert run_artifact(artifact, warmup=1, repeats=5, threads=1).output_check["passed"]


def test_resume_counts_recorded_trials(tuned):
    from edgekit.compile.tune import tune_model

    report, _ = tuned
    done = sum(t.trials for t in report.tasks)
    resumed = tune_model(_conv_model(), "host", trials=done, input_shapes=[SHAPE], resume=True)
    assert resumed.stopped_by == "nothing_to_do" and resumed.trials_run == 0


def test_cli_tune_json(tuned, tmp_path, capsys):
    import torch

    from edgekit.cli.main import main

    report, _ = tuned
    path = tmp_path / "conv.pt2"
    torch.export.save(torch.export.export(_conv_model(), (torch.randn(*SHAPE),)), str(path))
    done = sum(t.trials for t in report.tasks)
    code = main(["tune", "--model", str(path), "--target", "host", "--trials", str(done), "--resume", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stopped_by"] == "nothing_to_do" and out["database_dir"] == str(report.database_dir)


def test_cli_tune_rejects_a_target_it_cannot_measure(capsys):
    from edgekit.cli.main import main

    code = main(["tune", "--model", "zoo:fmnist-resnet", "--target", "rpi4", "--trials", "2"])
    assert code == 11
    assert "--host" in capsys.readouterr().err


def test_a_second_model_sharing_a_layer_spends_no_trials_on_it(tuned, tmp_path):
    """The 3x3 conv (with another epilogue) is found by its anchor block; only the new kernels are tuned,
    with the cost model the first run saved (no random cold start), and builds apply the record.
    (The run also stops by its time budget: one batch of two trials.)"""
    from edgekit.compile import compile_model
    from edgekit.compile.tune import tune_model
    from edgekit.run import run_artifact

    first, _ = tuned
    conv_first = next(t for t in first.tasks if "conv2d" in t.name)
    lines = []
    started = time.monotonic()
    second = tune_model(_conv_other_epilogue_model(), "host", trials=200, time_budget_s=1, trials_per_iter=2,
                        input_shapes=[SHAPE], search="metaschedule", log=lines.append)
    assert second.stopped_by == "time_budget" and time.monotonic() - started < 300  # after its first batch
    assert second.database_dir == first.database_dir, "one database per target, shared by models"
    shared = next(t for t in second.tasks if "conv2d" in t.name and "sigmoid" in t.name)
    assert shared.status == "in_database" and shared.trials_this_run == 0
    assert shared.name in second.to_dict()["tasks_in_database"]
    assert shared.trials == conv_first.trials, "no new record for the shared conv"
    assert any("already in the database" in line and shared.name in line for line in lines)
    new = [t for t in second.tasks if t.trials_this_run]
    assert second.trials_run == 2 and sum(t.trials_this_run for t in new) == 2
    assert all(t.name != shared.name for t in new)

    # The reloaded cost model ranked every candidate of this run: MetaSchedule's random warm-up skipped.
    model = second.cost_model
    assert model["loaded_samples"] >= first.trials_ok
    assert model["random_predictions"] == 0 and model["model_predictions"] > 0, model
    assert first.cost_model["random_predictions"] > 0, "the first run did start cold"
    assert any("cost model reloaded" in line for line in lines)

    # A build of the second model applies the first model's conv record (anchor trace transferred),
    # unless the gain measurement kept it out as slower than the default schedule.
    artifact = compile_model(_conv_other_epilogue_model(), "host", input_shapes=[SHAPE], out_dir=tmp_path)
    schedules, tuning = artifact.manifest["schedules"], artifact.manifest["tuning"]
    assert shared.gain is not None and shared.gain.default_us and shared.gain.error is None
    expected = "tuned" if shared.gain.applied else "kept_out_slower_than_default"
    where = schedules["tuned"] if shared.gain.applied else tuning["kept_out_slower_than_default"]
    assert shared.name in where, (expected, schedules, tuning)
    assert run_artifact(artifact, warmup=1, repeats=3, threads=1).output_check["passed"]


def test_a_record_slower_than_the_default_is_not_applied(tuned, tmp_path, capsys):
    """A record whose schedule launches a parallel region per output row loses to the default loop:
    `edgekit tune --json` reports it with its gain, and builds keep the default schedule."""
    import shutil

    import torch
    from tvm import s_tir
    from tvm.s_tir import meta_schedule as ms

    from edgekit.cli.main import main
    from edgekit.compile import compile_model
    from edgekit.compile.build import resolve_tvm_target
    from edgekit.compile.frontend import import_model
    from edgekit.compile.tune import extract_tasks, lower_for_tuning
    from edgekit.compile.tuning_db import open_database
    from edgekit.targets import load_target

    report, _ = tuned
    db_copy = tmp_path / "db"
    shutil.copytree(report.database_dir, db_copy)
    target = resolve_tvm_target(load_target("host"))
    tasks = extract_tasks(lower_for_tuning(import_model(_conv_model(), input_shapes=[SHAPE]).mod, target), target)
    transpose = next(t for t in tasks if t.task_name.startswith("transpose"))
    mod = transpose.dispatched[0]
    sch = s_tir.Schedule(mod)
    (block,) = sch.get_child_blocks(sch.get_sblock("root"))
    sch.parallel(sch.get_loops(block)[-1])  # a thread-pool launch for every element row: slow on purpose
    database = open_database(db_copy)
    database.commit_tuning_record(ms.database.TuningRecord(
        sch.trace, database.commit_workload(mod), [1e-8], target,  # claims to be the fastest record
        ms.arg_info.ArgInfo.from_prim_func(mod["main"])))
    del database

    path = tmp_path / "conv.pt2"
    torch.export.save(torch.export.export(_conv_model(), (torch.randn(*SHAPE),)), str(path))
    capsys.readouterr()
    code = main(["tune", "--model", str(path), "--target", "host", "--trials", "1", "--resume",
                 "--database", str(db_copy), "--json"])  # --resume --trials 1: measure, tune nothing
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stopped_by"] == "nothing_to_do" and out["trials_run"] == 0
    by_name = {t["name"]: t for t in out["tasks"]}
    slow = by_name[transpose.task_name]
    assert slow["applied"] is False and slow["gain_us"] == 0.0
    assert slow["tuned_us"] > slow["default_us"] > 0, slow
    kept = json.loads((db_copy / "slower_than_default.json").read_text())
    # Listed by record (MetaSchedule's own record for this transpose may be listed too: at one thread its
    # parallel + vectorized transposes measured 10-20x slower than the plain loop here).
    assert any(v["task"] == transpose.task_name and abs(v["tuned_us"] - slow["tuned_us"]) < 0.01
               for v in kept.values()), kept
    for task in out["tasks"]:  # every kernel with a record is measured against the default schedule
        if task["trials"]:
            assert task["default_us"] is not None and ("tuned_us" in task)
    assert abs(out["kernel_gain_us"] - sum(t["gain_us"] for t in out["tasks"])) < 0.01

    artifact = compile_model(_conv_model(), "host", input_shapes=[SHAPE], out_dir=tmp_path / "a", tuning=db_copy)
    assert transpose.task_name not in artifact.manifest["schedules"]["tuned"]
    assert transpose.task_name in artifact.manifest["tuning"]["kept_out_slower_than_default"]


class _Task:
    def __init__(self, name, weight=1.0):
        self.task_name, self.weight = name, weight


def test_tuning_goes_to_the_kernels_that_hold_the_time():
    """Pure logic: slowest first (weight x default time) up to FOCUS_SHARE; an unmeasured kernel is tuned."""
    from edgekit.compile.tune import focus_tasks

    tasks = [_Task("big", 2.0), _Task("mid"), _Task("small"), _Task("tiny"), _Task("unknown")]
    times = {"big": 40.0, "mid": 15.0, "small": 3.0, "tiny": 2.0, "unknown": None}  # big: 80 of 100 us
    tuned, left = focus_tasks(tasks, times, share=0.9)
    assert [t.task_name for t in tuned] == ["big", "mid", "unknown"]
    assert [t.task_name for t in left] == ["small", "tiny"]
    assert [t.task_name for t in focus_tasks(tasks, times, share=1.0)[0]] == [t.task_name for t in tasks]


def test_the_first_round_fits_in_the_time_budget():
    """One batch of every task before any is measured: its size shrinks so that round fits the budget."""
    from edgekit.compile.tune import FIRST_ROUND_SHARE, SECONDS_PER_BATCH, SECONDS_PER_CANDIDATE_CORE, \
        _trials_per_iter

    assert _trials_per_iter(100_000, 10) == 32
    per_iter = _trials_per_iter(100_000, 16, time_budget_s=600, cores=2)
    first_round_s = 16 * (SECONDS_PER_BATCH + per_iter * SECONDS_PER_CANDIDATE_CORE / 2)
    assert 2 <= per_iter < 32 and first_round_s <= FIRST_ROUND_SHARE * 600 + 16
    assert _trials_per_iter(100_000, 50, time_budget_s=60, cores=2) == 2


def test_past_the_time_budget_batches_are_not_built_and_nothing_measured_is_lost():
    """MetaSchedule builds one batch of every task before joining any: past the deadline the builder
    hands batches back unbuilt, those never reach the database or the cost model, and the loop is left
    only after the last really built batch was joined (its records saved)."""
    from tvm.s_tir.meta_schedule.builder import BuilderResult
    from tvm.s_tir.meta_schedule.runner import RunnerResult

    from edgekit.compile.tune_progress import SKIPPED, Monitor, OutOfTime

    class CountingBuilder:
        batches = 0

        def build(self, inputs):
            CountingBuilder.batches += 1
            return [BuilderResult("/nonexistent.so", None) for _ in inputs]

    class Recorder:
        seen = []

        def apply(self, scheduler, task_id, candidates, built, ran):
            Recorder.seen.append((task_id, len(built)))

    import tvm
    from tvm.s_tir.meta_schedule.builder import BuilderInput

    monitor = Monitor(100, 1e-6, lambda line: None, ["a", "b", "c"])
    builder = monitor.builder(CountingBuilder())
    monitor.callback([Recorder()])
    inputs = [BuilderInput(tvm.IRModule(), tvm.target.Target("llvm"))] * 2
    first = builder.build(inputs)  # the first batch is always built, whatever the budget
    later = builder.build(inputs)
    assert CountingBuilder.batches == 1 and [str(r.error_msg) for r in later] == [SKIPPED, SKIPPED]
    assert all(r.error_msg is None for r in first)

    ok = [RunnerResult([1e-5], None), RunnerResult([2e-5], None)]
    skipped = [RunnerResult(None, SKIPPED), RunnerResult(None, SKIPPED)]
    monitor.join(None, 1, [None, None], later, skipped)  # the unbuilt batch: no stop yet, nothing seen
    assert Recorder.seen == [] and not monitor.out_of_time
    with pytest.raises(OutOfTime):
        monitor.join(None, 0, [None, None], first, ok)  # the built batch: recorded, then the loop is left
    assert Recorder.seen == [(0, 2)] and monitor.measured == 2 and monitor.ok == 2 and monitor.out_of_time
