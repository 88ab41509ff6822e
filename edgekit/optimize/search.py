"""``optimize_model``: measured on-device latency chooses which layer to shrink, step by step (NetAdapt).

This module is the verb: it resolves the model, the data and the device, creates or resumes the run's state,
runs the loop (loop.py) and writes the reports.  The rest of the stage: config.py (SearchConfig),
proposals.py (what may be pruned), prediction.py (latency measured or predicted), records.py (status,
candidates, result), state.py (the run directory), report.py (markdown/plots), quantize_choice.py.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

from edgekit.errors import DataError, EdgekitError, UsageError
from edgekit.optimize.config import METRICS, SearchConfig  # noqa: F401 - re-exported
from edgekit.optimize.loop import SearchLoop
from edgekit.optimize.proposals import flops_proposal  # noqa: F401 - re-exported
from edgekit.optimize.records import OptimizeResult, SearchStatus, result_from_state

__all__ = ["optimize_model", "OptimizeResult", "SearchConfig", "SearchStatus"]


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
        if SearchStatus(state["status"]).finished and state["result"]:
            say(f"{run_dir}: the search already finished ({state['status']}); nothing to resume")
            return result_from_state(state)
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
        before = SearchStatus(state.data.pop("status_before", SearchStatus.RUNNING))
        state["status"] = before if before.stopped else SearchStatus.RUNNING
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
    search = SearchLoop(state, config, data, teacher, input_shape, device, proxy=proxy, cache_dir=cache_dir,
                     artifacts_dir=artifacts_dir, say=say, on_event=on_event)
    try:
        result = search.run()
    except BaseException as exc:
        if state["status"] != SearchStatus.INTERRUPTED:
            state["status_before"] = state["status"]  # a stop decision already taken survives the interruption
        state["status"] = SearchStatus.INTERRUPTED
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
        raise UsageError("no model given",
                         hint="pass zoo:fmnist-resnet, a .pt file of a whole module, or module:factory")
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
