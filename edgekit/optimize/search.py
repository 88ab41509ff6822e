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
                   connect: dict | None = None, threads: int = 1, accuracy_metric=None, image_options=None,
                   log: Callable[[str], None] | None = None, on_event: Callable[[str, dict], None] | None = None,
                   write_reports: bool = True, **options) -> OptimizeResult:
    """Find the pruned model with the best accuracy whose latency, measured on the device, meets the budget.

    ``model``: an ``nn.Module``, ``"zoo:NAME"``, a ``.pt`` file of a whole module, or ``module:factory``.
    ``data``: anything ``edgekit.data.user_data.load_data`` takes (``"fashion-mnist"``, ``"digits"``, an image
    folder, an ``.npz``, ``package.module:factory``) or a ``(train, test)`` pair of ``edgekit.data.Dataset``.
    ``accuracy_metric``: ``function(outputs, targets) -> float`` (higher is better) or its
    ``package.module:function`` spec, scoring every candidate (default: top-1, or R^2 for float targets);
    ``image_options``: an ``ImageOptions`` for an image folder.  Data the model cannot take raises a
    DataError before the run directory is written; a model near chance on the data is a warning first.
    The device: ``device`` (a ``feedback.devices.Device``), else ``host`` (``user@board[:port]`` over
    SSH), else this machine.  ``proxy``: no device; latency predicted from the cached table.
    ``resume``: continue the search in ``run_dir`` (its saved config wins; ``model`` may be None).
    ``options``: any ``SearchConfig`` field (step_ratio, finetune_epochs, seed, ...).

    Returns an ``OptimizeResult``; ``result.met`` is False (and ``result.chosen`` the closest
    candidate) when the budget cannot be met.  Device failures raise the deploy stage's
    ``DeviceError``s after the state is saved: ``resume=True`` continues from there.
    """
    import tempfile

    from edgekit.data.data_checks import data_warning, near_chance
    from edgekit.data.user_code import extend_import_path, import_roots
    from edgekit.optimize.state import RunState

    say = log or (lambda message: None)
    if resume:
        if run_dir is None:
            raise UsageError("resume needs the run directory", hint="edgekit optimize --resume RUN_DIR")
        state = RunState.load(run_dir)
        extend_import_path(state.config["setup"].get("import_paths"))  # the user's code, from any directory
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
        if accuracy_metric is None and setup.get("accuracy_metric") == "custom":
            raise UsageError(f"{run_dir} was searched with a metric function given through the API; pass it again")
        # The saved input shape gives an image folder the size and channels the first run decoded it at.
        data = _resolve_data(data, config, input_shape=tuple(setup["input_shape"]),
                             image_options=_image_options(image_options, setup.get("image_options")),
                             metric=accuracy_metric or setup.get("accuracy_metric"))
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

        if proxy and config.memory_budget_mb is not None:
            raise UsageError("a memory budget needs compiled artifacts, which --proxy does not build",
                             hint="drop --proxy, or budget latency and size only")
        load_target(config.target)  # an unknown target fails before any work
        data_name = _data_spec(data)
        model, model_source, model_shape = _resolve_model(model)
        data = _resolve_data(data, config, model=model, input_shape=model_shape, image_options=image_options,
                             metric=accuracy_metric)
        input_shape = (1, *data[0].input_shape)
        warning = near_chance(model, data[1], source=data_name or "the data")
        if warning:
            data_warning(warning, log)
        if device is None and not proxy:
            device = _make_device(host, connect, threads)
        run_dir = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="edgekit-optimize-"))
        setup = {"model": model_source, "data": data_name or "custom", "host": host, "proxy": proxy,
                 "threads": threads, "input_shape": list(input_shape),
                 "image_options": image_options.to_dict() if image_options is not None else None,
                 "accuracy_metric": _metric_spec(accuracy_metric), "data_warning": warning,
                 "import_paths": import_roots(_user_modules(model, data_name, accuracy_metric)),
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
    module = copy.deepcopy(module).eval() if loaded.form == "module" else module
    return module, loaded.source, loaded.input_shape


def _data_spec(data) -> str | None:
    """How the run's setup names the data so that a resume finds it again: a path made absolute, or a name."""
    if not isinstance(data, (str, Path)):
        return None
    path = Path(data)
    return str(path.resolve()) if path.exists() else str(data)


def _user_modules(model, data_spec, metric) -> list[str]:
    """The modules a resume imports again: the model's classes (unpickled), a data factory's, a metric's."""
    from edgekit.data.user_code import SPEC_RE

    names = [type(m).__module__ for m in model.modules()]
    for spec in (data_spec, metric):
        if isinstance(spec, str) and SPEC_RE.fullmatch(spec):
            names.append(spec.partition(":")[0])
        elif callable(spec):
            names.append(getattr(spec, "__module__", ""))
    return names


def _metric_spec(metric) -> str | None:
    if metric is None or isinstance(metric, str):
        return metric
    return getattr(metric, "edgekit_spec", None) or "custom"


def _image_options(given, saved: dict | None):
    from edgekit.data.image_folder import ImageOptions

    if given is not None or not saved:
        return given
    return ImageOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})


def _resolve_data(data, config: SearchConfig, *, model=None, input_shape=None, image_options=None, metric=None):
    """(train, val, test) Datasets: val is the data's own, or held out of train (seeded); never empty.

    With ``model``, the data is checked against it (edgekit.data.data_checks.check_fits): a DataError here, before
    the run directory exists, is one that never leaves a half-made run behind.
    """
    from edgekit.data import Dataset
    from edgekit.data.data_checks import check_fits
    from edgekit.data.metrics import load_metric
    from edgekit.data.user_data import DataSplits, load_data

    metric = load_metric(metric)
    if isinstance(data, (tuple, list)) and len(data) in (2, 3) and all(isinstance(d, Dataset) for d in data):
        parts = dict(zip(("train", "test") if len(data) == 2 else ("train", "val", "test"), data))
        splits = DataSplits(**parts, source="the data given").with_metric(metric)
    elif data is None or isinstance(data, (tuple, list)) and len(data) not in (2, 3):
        raise UsageError(f"data must be a data set name, a path, package.module:factory or a (train, test) pair, "
                         f"got {type(data).__name__}")
    else:
        splits = load_data(data, input_shape=input_shape, model=model, image_options=image_options, metric=metric,
                           seed=config.seed)
    train, val, test = splits.train, splits.val, splits.test
    for name, part in (("training", train), ("test", test)):
        if part is None or len(part) == 0:
            raise DataError(f"the {name} data is empty: the search needs labelled examples to fine-tune and score "
                            "candidates", hint="check the data set files, or the --data-limit you gave")
    if len(train) < 20:
        raise DataError(f"the training data has only {len(train)} examples; the search needs at least 20")
    if model is not None:
        check_fits(model, splits)
    if val is None:
        val_n = min(config.val_examples, max(1, len(train) // 5))
        train, val = train.split_off(val_n, seed=config.seed)
    elif len(val) > config.val_examples:
        val = val.subset(config.val_examples, seed=config.seed)
    if config.test_examples is not None:
        test = test.subset(config.test_examples, seed=config.seed)
    return train, val, test
