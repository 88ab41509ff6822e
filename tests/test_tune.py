"""MetaSchedule tuning on this machine: records written, reused by compile, resumable, time budget, CLI.

Real tuning (real builder and runner workers, real measurements) with a tiny trial budget on a
one-conv model; the real budgets live in tools/bench_speed.py.
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
    report = tune_model(_conv_model(), "host", trials=TRIALS, input_shapes=[SHAPE], trials_per_iter=2,
                        log=lines.append)
    return report, lines


def test_tuning_writes_records_under_the_target_and_fingerprint(tuned, cache):
    report, lines = tuned
    assert report.trials_run >= TRIALS and report.trials_ok > 0, report.errors
    assert report.database_dir.parent == cache / "tuning" / "host"
    records = (report.database_dir / "database_tuning_record.json").read_text().splitlines()
    assert len(records) >= report.trials_ok
    assert all(t.trials > 0 for t in report.tasks if "conv2d" in t.name)
    meta = json.loads((report.database_dir / "fingerprint.json").read_text())
    assert meta["fingerprint"] == report.fingerprint and meta["target"] == "host"
    assert any("trial" in line for line in lines), "progress is shown"


def test_compile_reuses_the_database_without_tuning(tuned, tmp_path):
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
    assert tuned_artifact.artifact_id != untuned.artifact_id, "the records applied are part of the id"
    assert tuned_artifact.manifest["tuning"]["kernels_tuned"] >= 1
    fast = run_artifact(tuned_artifact, warmup=5, repeats=30, threads=1)  # checks outputs too
    slow = run_artifact(untuned, warmup=5, repeats=30, threads=1)
    assert fast.output_check["passed"] and slow.output_check["passed"]
    assert fast.stats["median_ms"] < slow.stats["median_ms"], (fast.stats, slow.stats)
    again = compile_model(_conv_model(), "host", input_shapes=[SHAPE], out_dir=tmp_path)
    assert again.artifact_id == tuned_artifact.artifact_id


def test_resume_counts_recorded_trials_and_time_budget_stops(tuned):
    from edgekit.compile.tune import tune_model

    report, _ = tuned
    done = sum(t.trials for t in report.tasks)
    resumed = tune_model(_conv_model(), "host", trials=done, input_shapes=[SHAPE], resume=True)
    assert resumed.stopped_by == "nothing_to_do" and resumed.trials_run == 0
    started = time.monotonic()
    budgeted = tune_model(_conv_model(), "host", trials=200, time_budget_s=1, input_shapes=[SHAPE],
                          trials_per_iter=2)
    assert budgeted.stopped_by == "time_budget"
    assert budgeted.trials_run < 200 and time.monotonic() - started < 300


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
