"""Distributed training and distillation: one process per rank under torchrun, PyTorch's own DDP.

``train_distributed`` is what ``edgekit.compress.distill.train`` calls with ``nproc_per_node > 1`` (or with a
checkpoint directory).  The caller's process stays the coordinator and the ranks are torch's own:

    caller:  writes JOB_DIR/job.pt (student, teacher, data, config), runs torchrun
             (``torch.distributed.run --nproc-per-node N -m edgekit.compress.distributed JOB_DIR``, through
             torchrun_loopback.py so that its store listens on 127.0.0.1 only), then loads the trained
             weights into the student
    ranks:   ``init_process_group`` (gloo on CPU, NCCL when every rank has a GPU), the student wrapped in
             ``DistributedDataParallel``, each rank's share of every epoch from a ``DistributedSampler``

The global batch stays the recipe's ``batch_size`` (each rank takes ``ceil(batch_size / N)``) and DDP
averages the gradients, so one optimizer step sees the same number of examples with 1 or N processes and the
same recipe gives the same accuracy within noise.  Seeds: the sampler draws the very permutation one process
would (``train``'s shuffle seed), cut into disjoint shares, so each global batch holds the same examples as
with one process (BatchNorm statistics are still per rank); anything random inside the model (dropout) is
seeded ``seed + rank``.  Only rank 0 writes: a checkpoint after every epoch (CHECKPOINT_FILE, replaced
atomically, with CHECKPOINT_INFO beside it) and, at the end, RESULT_FILE.  With ``resume=True`` every rank
reads the last checkpoint and the run continues with the next epoch; a checkpoint made by another model,
data, recipe or process count is refused rather than mixed in: CHECKPOINT_INFO keeps a sha256 of each part
(the data's is over its content, every input and target value), so the refusal names what differs, and
other data is a DataError (exit 14).  A one-process run with a checkpoint directory is the same job with a
world of one rank, run in the caller's process (no torchrun), and resumes the same way.  Early stopping: rank 0 scores the held-out
data (the data's own metric, which need not split across ranks) and broadcasts the score.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edgekit.errors import DataError, EdgekitError, UsageError

JOB_FILE = "job.pt"
RESULT_FILE = "result.pt"
CHECKPOINT_FILE = "last.pt"
CHECKPOINT_INFO = "checkpoint.json"
MAX_NPROC_PER_NODE = 64  # more ranks than this on one machine is a typo, not a plan


class DistributedRunError(EdgekitError):
    """A rank failed or torchrun could not start them; the training did not finish."""

    exit_code = 1  # what a crashed rank means is not the user's input: the generic failure


def check_nproc_per_node(value: Any, *, flag: str = "--nproc-per-node") -> int:
    """The number of processes, or a UsageError (exit 2) that says what is valid."""
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(str(value).strip())
        except ValueError:
            raise UsageError(f"{flag} takes a whole number of processes, got {value!r}",
                             hint=f"e.g. {flag} 2 (one process per CPU core or GPU)") from None
    if not 1 <= value <= MAX_NPROC_PER_NODE:
        raise UsageError(f"{flag} must be between 1 and {MAX_NPROC_PER_NODE}, got {value}",
                         hint=f"e.g. {flag} 2 (one process per CPU core or GPU; 1 trains in this process)")
    return value


def backend_for(nproc_per_node: int) -> str:
    """NCCL when every rank can have its own GPU, gloo (CPU) otherwise."""
    import torch

    return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= nproc_per_node else "gloo"


def state_fingerprint(module) -> str:
    """sha256 over a module's parameter and buffer values (names, shapes, bytes)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def data_fingerprint(data) -> str | None:
    """sha256 over a Dataset's content: every input and target value, shapes and dtypes (None: no data)."""
    if data is None:
        return None
    import torch

    digest = hashlib.sha256()
    for tensor in (data.x, data.y):
        t = torch.as_tensor(tensor).detach().cpu().contiguous()
        digest.update(f"{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(dtype=torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _job_parts(student, teacher, train_data, val_data, config, nproc_per_node) -> dict[str, Any]:
    """What a checkpoint is a checkpoint of, part by part (checkpoint.json keeps them: a refusal names the part)."""
    from dataclasses import asdict

    return {"student": state_fingerprint(student),
            "teacher": None if teacher is None else state_fingerprint(teacher),
            "train_data": data_fingerprint(train_data), "val_data": data_fingerprint(val_data),
            "recipe": hashlib.sha256(json.dumps({k: v for k, v in asdict(config).items() if k != "threads"},
                                                sort_keys=True, default=str).encode()).hexdigest(),
            "nproc_per_node": nproc_per_node}


def _job_fingerprint(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------- the caller's side

def train_distributed(student, train_data, *, config, teacher=None, val_data=None, nproc_per_node: int = 2,
                      checkpoint_dir: str | Path | None = None, resume: bool = False, label: str = "train",
                      log=None):
    """Train ``student`` in place with ``nproc_per_node`` DDP ranks under torchrun; returns a TrainResult.

    ``checkpoint_dir`` keeps the per-epoch checkpoint (default: a temporary directory, removed after);
    ``resume`` continues from the checkpoint there.  Held-out data: as ``train`` (``config.val_size``).
    ``nproc_per_node=1``: the one rank runs in this process (a gloo group of one), with the same per-epoch
    checkpoints and resume; that is what ``train`` does for one process given a ``checkpoint_dir``.
    """
    import torch

    nproc_per_node = check_nproc_per_node(nproc_per_node, flag="nproc_per_node")
    say = log or (lambda message: None)
    if val_data is None and config.val_size > 0 and len(train_data) > 2 * config.val_size:
        train_data, val_data = train_data.split_off(config.val_size, seed=config.seed)
    if len(train_data) < nproc_per_node:
        raise DataError(f"{len(train_data)} training examples cannot be shared by {nproc_per_node} processes")
    parts = _job_parts(student, teacher, train_data, val_data, config, nproc_per_node)
    fingerprint = _job_fingerprint(parts)
    keep = checkpoint_dir is not None
    work = Path(checkpoint_dir) if keep else Path(tempfile.mkdtemp(prefix="edgekit-ddp-"))
    work.mkdir(parents=True, exist_ok=True)
    start_epoch = _resume_point(work, fingerprint, parts, resume)
    if start_epoch:
        say(f"{label}: resuming from the checkpoint of epoch {start_epoch} in {work}")
    job = {"student": student, "teacher": teacher, "train_data": train_data, "val_data": val_data,
           "config": config, "label": label, "fingerprint": fingerprint, "parts": parts, "start_epoch": start_epoch,
           "backend": "gloo" if nproc_per_node == 1 else backend_for(nproc_per_node)}
    (work / RESULT_FILE).unlink(missing_ok=True)
    if nproc_per_node == 1:  # one process: this one, a world of one rank, the same checkpoints and resume
        say(f"{label}: one process, a checkpoint per epoch in {work}")
        _run_in_process(work, job)
        return _collect(student, work, keep)
    try:
        torch.save(job, work / JOB_FILE)
    except Exception as exc:  # noqa: BLE001 - pickling a user's object raises anything
        raise DataError(f"cannot hand the training job to the ranks: {type(exc).__name__}: {str(exc)[:200]}",
                        hint="with nproc_per_node > 1 the model, data and metric must be picklable: give them as "
                             "specs (zoo:NAME, model.pt, package.module:function) rather than lambdas") from None
    say(f"{label}: {nproc_per_node} processes ({job['backend']}) under torchrun")
    _run_torchrun(work, nproc_per_node, config)
    return _collect(student, work, keep)


def _collect(student, work: Path, keep: bool):
    """The trained weights into ``student`` and the TrainResult, from what rank 0 wrote."""
    import torch

    from edgekit.compress.distill import TrainResult

    outcome = torch.load(work / RESULT_FILE, map_location="cpu", weights_only=False)
    student.load_state_dict(outcome["state_dict"])
    student.eval()
    (work / JOB_FILE).unlink(missing_ok=True)  # the models and data again: large, and the caller has them
    if not keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return TrainResult(**outcome["result"])


def _run_in_process(work: Path, job: dict) -> None:
    """The one rank of a one-process run, here: a gloo group of one (an in-memory store, no port opened)."""
    import copy

    import torch
    import torch.distributed as dist

    job = {**job, "student": copy.deepcopy(job["student"]), "in_process": True}  # DDP's hooks stay off the caller's
    ours = not dist.is_initialized()
    if ours:
        dist.init_process_group(backend="gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        _train_rank(job, work, rank=0, world=1, device=torch.device("cpu"))
    finally:
        if ours:
            dist.destroy_process_group()


_PART_NAMES = {"student": "the model", "teacher": "the teacher", "train_data": "the training data",
               "val_data": "the held-out data", "recipe": "the recipe step", "nproc_per_node": "the process count"}


def _resume_point(work: Path, fingerprint: str, parts: dict[str, Any], resume: bool) -> int:
    """The epoch to continue after (0: start over); a checkpoint of another job is refused on resume."""
    info_path = work / CHECKPOINT_INFO
    if not resume:
        (work / CHECKPOINT_FILE).unlink(missing_ok=True)
        info_path.unlink(missing_ok=True)
        return 0
    if not info_path.is_file() or not (work / CHECKPOINT_FILE).is_file():
        return 0
    info = json.loads(info_path.read_text())
    if info.get("fingerprint") == fingerprint:
        return int(info["epoch"])
    saved = info.get("parts") or {}
    differ = [name for name in _PART_NAMES if name in saved and saved[name] != parts.get(name)]
    if any(name in ("train_data", "val_data") for name in differ):
        which = " and ".join(_PART_NAMES[n] for n in differ if n in ("train_data", "val_data"))
        raise DataError(f"the checkpoint in {work} was trained on other data: {which} differ "
                        f"(content sha256 {str(saved.get('train_data'))[:12]} in the checkpoint, "
                        f"{str(parts.get('train_data'))[:12]} now); resuming would mix two datasets",
                        hint="resume with the --data the interrupted run had, or run without --resume to start over")
    what = ", ".join(_PART_NAMES[n] for n in differ) if differ else \
        "another model, data, recipe step or process count"
    raise UsageError(f"the checkpoint in {work} was made by {'another: ' + what if differ else what}"
                     + (f" (it had {saved['nproc_per_node']} process(es), now {parts['nproc_per_node']})"
                        if "nproc_per_node" in differ else ""),
                     hint="run again with the same model, recipe, data and --nproc-per-node, or without "
                          "--resume to start over")


def torchrun_command(nproc_per_node: int, module_args: list[str]) -> list[str]:
    """torchrun (torch.distributed.run) for one node, its store on loopback only, running ``-m MODULE ARGS``."""
    return [sys.executable, "-m", "edgekit.compress.torchrun_loopback", f"--nproc-per-node={nproc_per_node}",
            "--nnodes=1", "-m", *module_args]


def rank_environment(nproc_per_node: int, threads: int | None) -> dict[str, str]:
    """The ranks' environment: their share of the cores, gloo on the loopback interface."""
    env = dict(os.environ)
    per_rank = threads or max(1, (os.cpu_count() or 1) // nproc_per_node)
    env["OMP_NUM_THREADS"] = str(per_rank)  # set: torchrun would otherwise force 1 and warn
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo's pairs on loopback only
    return env


def _run_torchrun(work: Path, nproc_per_node: int, config) -> None:
    command = torchrun_command(nproc_per_node, ["edgekit.compress.distributed", str(work)])
    sys.stdout.flush()
    sys.stderr.flush()
    # The ranks' output is progress and errors, shown as it comes; on stderr, so stdout stays the caller's (--json).
    proc = subprocess.Popen(command, env=rank_environment(nproc_per_node, config.threads), stdout=2, stderr=None)
    try:
        proc.wait()
    except BaseException:
        # Ctrl-C reached torchrun too: give it the time to stop its ranks (a SIGKILL now would orphan them).
        try:
            proc.wait(timeout=30)
        except BaseException:
            proc.kill()
            proc.wait()
        raise
    if proc.returncode != 0 or not (work / RESULT_FILE).is_file():
        raise DistributedRunError(f"distributed training failed (torchrun exit status {proc.returncode}; the ranks' "
                                  f"errors are above); the last checkpoint, if any, is in {work}",
                                  hint="fix the cause and run again with --resume to continue from the checkpoint")


# ---------------------------------------------------------------- the ranks' side

def _write_atomic(path: Path, write) -> None:
    """Only rank 0 calls this: write to a temporary name, then rename (a kill leaves the old file whole)."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def run_rank(work: Path) -> None:
    """One rank of the job in ``work``: torchrun set RANK, WORLD_SIZE, LOCAL_RANK and the master address."""
    import torch
    import torch.distributed as dist

    _die_with_agent()
    job = torch.load(work / JOB_FILE, map_location="cpu", weights_only=False)
    rank, world, local_rank = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    backend = job["backend"]
    device = torch.device(f"cuda:{local_rank}") if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    try:
        _train_rank(job, work, rank=rank, world=world, device=device)
    finally:
        dist.destroy_process_group()


def _die_with_agent() -> None:
    """End this rank when torchrun's agent dies (it starts ranks in their own sessions, so a SIGKILL of the
    agent would leave them training, and writing checkpoints, beside the run that resumes)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    agent = os.getppid()
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != agent:  # it died before prctl took effect
        os._exit(1)


def _train_rank(job: dict, work: Path, *, rank: int, world: int, device) -> None:
    import copy

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    from edgekit.compress.distill import _accuracy, distillation_loss

    config, teacher, train_data, val_data = job["config"], job["teacher"], job["train_data"], job["val_data"]
    if not job.get("in_process"):  # a torchrun rank: its share of the cores (in process: the caller's setting)
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    elif config.threads is not None:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed + rank)  # per-rank randomness (dropout); the shuffle is the sampler's
    student = job["student"].to(device)
    if teacher is not None:
        teacher = teacher.to(device).eval()
    model = DistributedDataParallel(student) if device.type == "cpu" else DistributedDataParallel(
        student, device_ids=[device.index])
    # The seed of Dataset.batches' shuffle in train(): with set_epoch(epoch) the sampler draws the same
    # permutation as one process does, so global batch k holds the same examples with 1 or N processes.
    sampler = DistributedSampler(TensorDataset(train_data.x, train_data.y), num_replicas=world, rank=rank,
                                 shuffle=True, seed=config.seed * 1000)
    per_rank_batch = -(-config.batch_size // world)
    loader = DataLoader(TensorDataset(train_data.x, train_data.y), batch_size=per_rank_batch, sampler=sampler)
    steps_per_epoch = len(loader)
    opt = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch,
                                                pct_start=0.15 if teacher is None else 0.05)
    state = {"epoch": 0, "best_acc": None, "best_epoch": 0, "best_state": None, "stale": 0, "history": [],
             "seconds": 0.0}
    if job["start_epoch"]:
        saved = torch.load(work / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
        student.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        state = saved["state"]
    started = time.perf_counter() - state["seconds"]
    stopped_early = False
    for epoch in range(state["epoch"] + 1, config.epochs + 1):
        model.train()
        sampler.set_epoch(epoch)
        total_loss, seen = torch.zeros(2, dtype=torch.float64, device=device), 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with torch.no_grad():
                t_out = teacher(x) if teacher is not None else None
            loss = distillation_loss(model(x), t_out, y, temperature=config.temperature,
                                     alpha=config.alpha if teacher is not None else 0.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients of every rank here
            opt.step()
            sched.step()
            total_loss += torch.tensor([loss.item() * len(y), len(y)], dtype=torch.float64, device=device)
        dist.all_reduce(total_loss)
        row = {"epoch": epoch, "loss": float(total_loss[0] / total_loss[1])}
        stop = _score_epoch(row, student, val_data, state, config, rank=rank, device=device,
                            accuracy=_accuracy, copy=copy)
        state["history"].append(row)
        state["epoch"] = epoch
        state["seconds"] = time.perf_counter() - started
        if rank == 0:
            _save_checkpoint(work, job, student, opt, sched, state, world)
            score = f", held-out {row['val_accuracy']:.4f}" if "val_accuracy" in row else ""
            print(f"{job['label']}: epoch {epoch}/{config.epochs} loss {row['loss']:.4f}{score} "
                  f"({world} process{'es' if world > 1 else ''}; checkpoint written)", file=sys.stderr, flush=True)
        if stop and epoch < config.epochs:
            stopped_early = True
            break
    pids = [None] * world
    dist.all_gather_object(pids, os.getpid())  # which process was which rank: tests check who wrote files
    if rank == 0:
        best = state["best_state"]
        final = best if best is not None else {k: v.cpu() for k, v in student.state_dict().items()}
        result = {"epochs_run": len(state["history"]), "best_epoch": state["best_epoch"] or len(state["history"]),
                  "best_val_accuracy": state["best_acc"], "stopped_early": stopped_early,
                  "seconds": time.perf_counter() - started, "history": state["history"],
                  "distributed": {"world_size": world, "backend": job["backend"],
                                  "per_rank_batch_size": per_rank_batch, "resumed_from_epoch": job["start_epoch"], "rank_pids": pids}}
        _write_atomic(work / RESULT_FILE, lambda p: torch.save({"state_dict": final, "result": result,
                                                                  "written_by_rank": rank}, p))


def _score_epoch(row, student, val_data, state, config, *, rank, device, accuracy, copy) -> bool:
    """Rank 0 scores the held-out data and tells every rank; returns whether to stop early (same on all ranks)."""
    import torch.distributed as dist

    if val_data is None:
        return False
    shared = [None]
    if rank == 0:
        shared = [accuracy(student.cpu() if device.type != "cpu" else student, val_data)]
        student.to(device)
    dist.broadcast_object_list(shared, src=0)
    acc = row["val_accuracy"] = shared[0]
    if state["best_acc"] is None or acc > state["best_acc"] + config.min_delta:
        state.update(best_acc=acc, best_epoch=row["epoch"], stale=0)
        if rank == 0:  # only rank 0 keeps (and later writes) the best weights
            state["best_state"] = {k: v.detach().cpu().clone() for k, v in student.state_dict().items()}
        return False
    state["stale"] += 1
    return state["stale"] >= config.patience


def _save_checkpoint(work: Path, job, student, opt, sched, state, world) -> None:
    import torch

    payload = {"model": {k: v.cpu() for k, v in student.state_dict().items()}, "optimizer": opt.state_dict(),
               "scheduler": sched.state_dict(), "state": state}
    _write_atomic(work / CHECKPOINT_FILE, lambda p: torch.save(payload, p))
    info = {"fingerprint": job["fingerprint"], "parts": job["parts"], "epoch": state["epoch"],
            "epochs": job["config"].epochs,
            "world_size": world, "written_by_rank": 0, "label": job["label"]}
    _write_atomic(work / CHECKPOINT_INFO, lambda p: p.write_text(json.dumps(info, indent=2) + "\n"))


if __name__ == "__main__":  # a rank, started by torchrun: python -m edgekit.compress.distributed JOB_DIR
    run_rank(Path(sys.argv[1]))
