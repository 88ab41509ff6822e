"""Factories for tests/test_models.py's ``package.module:factory`` specs (tests/ is on sys.path under pytest)."""

import torch

from edgekit.testing.models import ResNetTiny


def tiny():
    """The model every form in test_models.py names: a seeded ResNetTiny for 1x28x28 inputs."""
    torch.manual_seed(0)
    return ResNetTiny(in_ch=1, width=4).eval()


def untrained():
    """The same architecture with other weights: ``model_factory:untrained@weights.pt`` loads tiny's into it."""
    torch.manual_seed(123)
    return ResNetTiny(in_ch=1, width=4).eval()


def not_a_module():
    return "a string"
