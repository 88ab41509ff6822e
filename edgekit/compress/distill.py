"""Training and knowledge distillation (Hinton et al. 2015), the recovery step after pruning.

Classifiers (integer labels): loss = alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T))
                                     + (1 - alpha) * CE(student, labels)
Any other output (float targets: regression, embeddings, several outputs):
                              loss = alpha * MSE(student, teacher) + (1 - alpha) * MSE(student, targets)
Temperature only means something for logits, so it is not used in the MSE form.

Seeded (same seed, same data, same thread count -> same weights), stops early when the
held-out accuracy has not improved for ``patience`` epochs and restores the best epoch.
Progress is a rich bar on a terminal and nothing in a pipe (``progress=None`` decides by
``sys.stderr.isatty()``).
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from edgekit.errors import DataError, RecipeError


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 128
    weight_decay: float = 0.0
    seed: int = 0
    temperature: float = 4.0  # distillation only
    alpha: float = 0.7  # weight of the soft-target term; 0 = labels only
    patience: int = 2  # epochs without improvement before stopping
    min_delta: float = 0.0005  # an improvement smaller than this does not count
    val_size: int = 5000  # held out of the training data for early stopping (0 = no early stop)
    threads: int | None = None  # torch.set_num_threads for the run; None leaves it

    def __post_init__(self):
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
            (0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}"),
            (self.patience >= 1, f"patience must be >= 1, got {self.patience}"),
            (self.val_size >= 0, f"val_size must be >= 0, got {self.val_size}"),
        ]
        for ok, problem in checks:
            if not ok:
                raise RecipeError(f"distill/train option invalid: {problem}")


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    epochs_run: int
    best_epoch: int
    best_val_accuracy: float | None
    stopped_early: bool
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    # With several processes (distributed.py): world_size, backend, per_rank_batch_size, resumed_from_epoch.
    distributed: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"epochs_run": self.epochs_run, "best_epoch": self.best_epoch,
             "best_val_accuracy": self.best_val_accuracy, "stopped_early": self.stopped_early,
             "seconds": round(self.seconds, 2), "history": self.history}
        return d if self.distributed is None else {**d, "distributed": self.distributed}


def distillation_loss(student_out, teacher_out, targets, *, temperature: float, alpha: float,
                      classification: bool | None = None):
    """KL on logits plus cross-entropy for a classifier; MSE to the teacher and to the targets otherwise.

    ``classification`` defaults to what the targets say: integer labels are classes.
    """
    if classification is None:
        classification = not targets.is_floating_point()
    if classification:
        return _classifier_loss(_first(student_out), None if teacher_out is None else _first(teacher_out), targets,
                                temperature=temperature, alpha=alpha)
    hard = _mse(student_out, targets)
    if teacher_out is None or alpha == 0.0:
        return hard
    return alpha * _mse(student_out, teacher_out) + (1.0 - alpha) * hard


def _classifier_loss(student_logits, teacher_logits, labels, *, temperature: float, alpha: float):
    import torch.nn.functional as F

    hard = F.cross_entropy(student_logits, labels)
    if teacher_logits is None or alpha == 0.0:
        return hard
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)
    return alpha * soft + (1.0 - alpha) * hard


def _leaves(out) -> list:
    if isinstance(out, dict):
        return [v for _, v in sorted(out.items())]
    if isinstance(out, (tuple, list)):
        return [leaf for item in out for leaf in _leaves(item)]
    return [out]


def _first(out):
    return _leaves(out)[0]


def _mse(student_out, other):
    """Mean squared error summed over every output; a single target tensor is matched to the first output."""
    import torch.nn.functional as F

    ours, theirs = _leaves(student_out), _leaves(other)
    if len(theirs) == 1 and len(ours) > 1:  # targets for the main output only
        ours = ours[:1]
    if len(ours) != len(theirs):
        raise DataError(f"cannot compare {len(ours)} model outputs with {len(theirs)} targets")
    return sum(F.mse_loss(a, b.reshape(a.shape).to(a.dtype)) for a, b in zip(ours, theirs))


def _accuracy(model, data, batch_size: int = 512) -> float:
    from edgekit.evaluate import evaluate  # the data's own score: top-1, R^2 or the user's metric

    return evaluate(model, data, batch_size=batch_size)


class _Progress:
    """A rich progress bar on a terminal; silent otherwise."""

    def __init__(self, enabled: bool, total: int, label: str):
        self._bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(label, total=total, info="")

    def advance(self, info: str = ""):
        if self._bar is not None:
            self._bar.update(self._task, advance=1, info=info)

    def close(self):
        if self._bar is not None:
            self._bar.stop()


def train(student, train_data, *, config: TrainConfig = TrainConfig(), teacher=None, val_data=None,
          progress: bool | None = None, label: str = "train",
          on_epoch: Callable[[dict[str, float]], None] | None = None, nproc_per_node: int = 1,
          checkpoint_dir=None, resume: bool = False, log: Callable[[str], None] | None = None) -> TrainResult:
    """Train ``student`` in place (with ``teacher``: distil).  Returns what happened.

    Without ``val_data``, ``config.val_size`` examples are held out of ``train_data`` for
    early stopping; the student ends with the weights of its best validation epoch.
    ``nproc_per_node`` > 1: that many DDP processes under torchrun (distributed.py), with a
    checkpoint per epoch in ``checkpoint_dir`` and ``resume`` to continue from it.  One process with a
    ``checkpoint_dir``: the same, in this process (a world of one rank), resumable alike.
    """
    import torch

    if nproc_per_node != 1 or checkpoint_dir is not None:  # checkpoints (resumable): distributed.py, even for one
        from edgekit.compress.distributed import train_distributed

        return train_distributed(student, train_data, config=config, teacher=teacher, val_data=val_data,
                                 nproc_per_node=nproc_per_node, checkpoint_dir=checkpoint_dir, resume=resume,
                                 label=label, log=log)

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    if val_data is None and config.val_size > 0 and len(train_data) > 2 * config.val_size:
        train_data, val_data = train_data.split_off(config.val_size, seed=config.seed)
    if progress is None:
        progress = sys.stderr.isatty()
    if teacher is not None:
        teacher.eval()
    steps_per_epoch = -(-len(train_data) // config.batch_size)
    opt = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch,
                                                pct_start=0.15 if teacher is None else 0.05)
    bar = _Progress(progress, config.epochs * steps_per_epoch, label)
    best_acc, best_state, best_epoch, stale, history = None, None, 0, 0, []
    started = time.perf_counter()
    stopped_early = False
    try:
        for epoch in range(1, config.epochs + 1):
            student.train()
            total_loss = 0.0
            for x, y in train_data.batches(config.batch_size, shuffle=True, seed=config.seed * 1000 + epoch):
                with torch.no_grad():
                    t_logits = teacher(x) if teacher is not None else None
                loss = distillation_loss(student(x), t_logits, y, temperature=config.temperature,
                                         alpha=config.alpha if teacher is not None else 0.0)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total_loss += loss.item() * len(y)
                bar.advance(f"epoch {epoch} loss {loss.item():.3f}")
            row = {"epoch": epoch, "loss": total_loss / len(train_data)}
            if val_data is not None:
                row["val_accuracy"] = _accuracy(student, val_data)
            history.append(row)
            if on_epoch is not None:
                on_epoch(row)
            if val_data is None:
                continue
            acc = row["val_accuracy"]
            if best_acc is None or acc > best_acc + config.min_delta:
                best_acc, best_epoch, stale = acc, epoch, 0
                best_state = copy.deepcopy(student.state_dict())
            else:
                stale += 1
                if stale >= config.patience and epoch < config.epochs:
                    stopped_early = True
                    break
    finally:
        bar.close()
    if best_state is not None:
        student.load_state_dict(best_state)
    student.eval()
    return TrainResult(epochs_run=len(history), best_epoch=best_epoch or len(history),
                       best_val_accuracy=best_acc, stopped_early=stopped_early,
                       seconds=time.perf_counter() - started, history=history)


def distill(student, teacher, train_data, *, config: TrainConfig = TrainConfig(), **kwargs) -> TrainResult:
    """Distil ``teacher`` into ``student`` (in place); see :func:`train`."""
    return train(student, train_data, config=config, teacher=teacher, label=kwargs.pop("label", "distill"),
                 **kwargs)


def clone_model(model):
    return copy.deepcopy(model)
