"""The knob search (edgekit.compile.knob_search): every variant it measures computes what the default
schedule computes, and a recorded winner is what a later build applies, exact against torch.

Real kernels (lowered from a torch model, built with TVM's llvm backend, run here) and real
measurements; only the win margin is lowered in one test, so that a record is written whatever
this machine's timings are.
"""

from __future__ import annotations

import numpy as np
import pytest

SHAPE = (1, 8, 16, 16)


def _knob_model():
    """A 3x3 conv (padded), a depthwise 3x3 with stride 2, a 1x1 conv and a token matmul (m > 1)."""
    import torch

    class KnobNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(8, 32, 3, padding=1)
            self.depthwise = torch.nn.Conv2d(32, 32, 3, stride=2, padding=1, groups=32)
            self.pointwise = torch.nn.Conv2d(32, 48, 1)
            self.mix = torch.nn.Linear(48, 64)

        def forward(self, x):
            x = torch.relu(self.conv(x))
            x = torch.relu(self.depthwise(x))
            x = self.pointwise(x)                      # 1 x 48 x 8 x 8
            tokens = x.flatten(2).transpose(1, 2)      # 64 tokens of 48
            return self.mix(tokens)

    torch.manual_seed(0)
    return KnobNet().eval()


@pytest.fixture(scope="module")
def knob_tasks():
    from edgekit.compile.build import resolve_tvm_target
    from edgekit.compile.frontend import import_model
    from edgekit.compile.tune import _worth_tuning, extract_tasks, lower_for_tuning
    from edgekit.targets import load_target

    tvm_target = resolve_tvm_target(load_target("host"))
    imported = import_model(_knob_model(), input_shapes=[SHAPE])
    lowered = lower_for_tuning(imported.mod, tvm_target)
    return tvm_target, [t for t in extract_tasks(lowered, tvm_target) if _worth_tuning(t)]


def _run_kernel(mod, tvm_target, inputs):
    import tvm

    with tvm_target:
        lib = tvm.compile(mod, target=tvm_target)
    args = [tvm.runtime.tensor(a) for a in inputs]
    lib["main"](*args)
    return args[-1].numpy()


def _random_args(mod):
    from tvm.s_tir import meta_schedule as ms

    rng = np.random.default_rng(0)
    return [rng.standard_normal([int(s) for s in info.shape]).astype(str(info.dtype))
            for info in ms.arg_info.ArgInfo.from_prim_func(mod["main"])]


def test_every_knob_variant_computes_what_the_default_computes(knob_tasks):
    from edgekit.compile.knob_search import ConvSpace, MatmulSpace, knob_space, schedules_of
    from edgekit.compile.schedules.target_info import cpu_info
    from edgekit.compile.tune_gain import default_schedule

    tvm_target, tasks = knob_tasks
    cpu = cpu_info(tvm_target)
    families = set()
    for task in tasks:
        mod = task.dispatched[0]
        space = knob_space(mod, cpu)
        if space is None:
            continue
        families.add(type(space).__name__ + (" depthwise" if getattr(space, "depthwise", False) else ""))
        first = space.first_round()
        variants = schedules_of(space, [*first, *space.refinements(first[0])])
        assert len(variants) > 1, f"{task.task_name}: one variant is no search"
        inputs = _random_args(mod)
        expected = _run_kernel(default_schedule(mod, tvm_target), tvm_target, [a.copy() for a in inputs])
        for knobs, sch in variants.items():
            got = _run_kernel(sch.mod, tvm_target, [a.copy() for a in inputs])
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=f"{task.task_name} {knobs.label}")
    assert families == {ConvSpace.__name__, ConvSpace.__name__ + " depthwise", MatmulSpace.__name__}, families


def test_a_recorded_knob_winner_is_applied_by_the_build_and_stays_exact(monkeypatch, tmp_path):
    """``--search knobs`` writes MetaSchedule records; a compile applies them (no veto: the margin is
    lowered so a record is written, and the gain measurement decides what builds apply)."""
    from edgekit.compile import compile_model, knob_search
    from edgekit.compile.tune import tune_model
    from edgekit.run import run_artifact

    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(knob_search, "MIN_GAIN", -10.0)  # record every kernel's best variant
    for space in (knob_search.ConvSpace, knob_search.MatmulSpace):  # a few variants each: the test is the records
        first, refine = space.first_round, space.refinements
        monkeypatch.setattr(space, "first_round", lambda self, first=first: first(self)[:3])
        monkeypatch.setattr(space, "refinements", lambda self, best, refine=refine: refine(self, best)[:1])
    lines = []
    report = tune_model(_knob_model(), "host", input_shapes=[SHAPE], search="knobs", log=lines.append)
    assert report.trials_run == 0, "--search knobs runs no MetaSchedule trial"
    searched = {k.name: k for k in report.knob_search}
    assert searched and all(k.recorded and k.variants > 1 for k in searched.values()), report.to_dict()["knob_search"]
    assert any("knob search" in line for line in lines)
    records = (report.database_dir / "database_tuning_record.json").read_text().splitlines()
    assert len(records) == len(searched)
    for task in report.tasks:
        if task.name in searched:
            assert task.status == "tuned" and task.gain is not None and task.gain.error is None, task.to_dict()

    artifact = compile_model(_knob_model(), "host", input_shapes=[SHAPE], out_dir=tmp_path)
    applied = set(artifact.manifest["schedules"]["tuned"])
    kept_out = set(artifact.manifest["tuning"]["kept_out_slower_than_default"])
    assert applied | kept_out == set(searched), (applied, kept_out)
    assert {t.name for t in report.tasks if t.gain is not None and t.gain.applied} == applied
    assert run_artifact(artifact, warmup=1, repeats=5, threads=1).output_check["passed"]


def test_an_unknown_search_is_a_clear_error():
    from edgekit.compile.tune import tune_model
    from edgekit.errors import CompileError

    with pytest.raises(CompileError, match="unknown search 'anneal'"):
        tune_model(_knob_model(), "host", input_shapes=[SHAPE], search="anneal")
