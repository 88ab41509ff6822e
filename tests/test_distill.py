"""Distillation: the loss, determinism with a seed, early stopping, quiet output in a pipe."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgekit.compress.distill import TrainConfig, distill, distillation_loss, train
from edgekit.errors import RecipeError

torch.set_num_threads(1)


def test_alpha_zero_is_plain_cross_entropy_and_matching_teacher_leaves_only_the_hard_term():
    torch.manual_seed(0)
    s, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
    hard = F.cross_entropy(s, y)
    torch.testing.assert_close(distillation_loss(s, torch.randn(8, 10), y, temperature=4.0, alpha=0.0), hard)
    torch.testing.assert_close(distillation_loss(s, s.clone(), y, temperature=4.0, alpha=0.7), 0.3 * hard)


def test_soft_term_is_scaled_by_temperature_squared():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    kl = F.kl_div(F.log_softmax(s / 2, 1), F.softmax(t / 2, 1), reduction="batchmean")
    torch.testing.assert_close(distillation_loss(s, t, y, temperature=2.0, alpha=1.0), kl * 4)


def _student_teacher():
    from edgekit.compress.prune import PruneConfig, prune_model
    from edgekit.data import load_zoo_model

    teacher = load_zoo_model("fmnist-resnet")
    student = prune_model(teacher, PruneConfig(ratio=0.5)).model
    return student, teacher


def test_distillation_recovers_a_pruned_model_and_is_deterministic():
    from edgekit.data import load_dataset
    from edgekit.evaluate import evaluate

    data = load_dataset("fashion-mnist", "train", limit=3000, seed=1)
    test = load_dataset("fashion-mnist", "test", limit=1000)
    cfg = TrainConfig(epochs=1, lr=2e-3, seed=7, val_size=0)
    student_a, teacher = _student_teacher()
    before = evaluate(student_a, test)
    distill(student_a, teacher, data, config=cfg, progress=False)
    student_b, _ = _student_teacher()
    distill(student_b, teacher, data, config=cfg, progress=False)
    for pa, pb in zip(student_a.parameters(), student_b.parameters()):
        assert torch.equal(pa, pb)
    after = evaluate(student_a, test)
    assert after > before + 0.2 and after > 0.7, (before, after)


def test_training_stops_early_on_a_plateau_and_keeps_the_best_epoch():
    from edgekit.data import load_dataset

    data = load_dataset("digits", "train")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))  # no BN statistics to drift
    # a learning rate this small cannot move the validation accuracy: a plateau from the start
    result = train(model, data, config=TrainConfig(epochs=6, lr=1e-9, patience=2, val_size=300),
                   progress=False)
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1


def test_progress_is_silent_in_a_pipe(capsys):
    from edgekit.data import load_dataset
    from edgekit.data.zoo import build_zoo_model

    model = build_zoo_model("fmnist-mobilenetv2")
    train(model, load_dataset("digits", "test"), config=TrainConfig(epochs=1, val_size=0))  # stderr is not a tty
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"alpha": 1.5}, {"temperature": 0.0}, {"lr": -1.0}])
def test_bad_training_options_fail_clearly(bad):
    with pytest.raises(RecipeError):
        TrainConfig(**bad)
