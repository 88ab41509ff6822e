"""What the search may do to a model: its prunable layer groups, their candidate widths, and the proposals.

A *group* is a set of channels that must be removed together (the compress stage's dependency graph);
``PruningSpace`` lists the groups the search may shrink (not frozen, not excluded), the widths each may
take (multiples of a fixed fraction of its original width, never below the floor), and prunes a model to
one of them.  ``select_proposals`` picks, per group, the smallest step whose predicted cost reaches the
iteration's target.  ``flops_proposal`` is the FLOPs-driven choice, for comparison only.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any, Callable


class PruningSpace:
    def __init__(self, config, input_shape):
        self.config = config
        self.input_shape = tuple(input_shape)

    def groups(self, model) -> list:
        """The groups of ``model`` the search may shrink: not frozen, not matched by ``config.exclude``."""
        from edgekit.compress.prune import dependency_groups

        out = []
        for g in dependency_groups(model, input_shape=self.input_shape):
            if g.frozen or any(fnmatch.fnmatchcase(g.name, pat) for pat in self.config.exclude):
                continue
            out.append(g)
        return out

    def widths_for(self, original: int, current: int) -> list[int]:
        """Candidate widths below ``current``, largest first: multiples of a fixed fraction of the original."""
        step = max(1, round(original * self.config.width_step_ratio))
        floor = max(1, math.ceil(original * self.config.min_width_ratio))
        widths = [original - k * step for k in range(1, original // step + 1)]
        return [w for w in widths if floor <= w < current]

    def prune_to(self, model, group, width: int):
        from edgekit.compress.prune import PruneConfig, prune_model

        ratio = (group.channels - width) / group.channels
        result = prune_model(model, PruneConfig(ratio=0.0, layer_ratios={group.name: ratio}),
                             input_shape=self.input_shape)
        return result.model

    def widths_of(self, model) -> dict[str, int]:
        return {g.name: g.channels for g in self.groups(model)}


@dataclass(frozen=True)
class Proposal:
    """One group shrunk to one width: the pruned model and what it is predicted to cost."""

    index: int  # of the group, in PruningSpace.groups order (a tie-breaker and part of the seed)
    group: Any  # compress.prune's dependency group
    width: int
    model: Any
    predicted: dict[str, Any]  # latency_ms, size_bytes, source


# What each budgeted resource is called in a measurement (and a prediction) dict.
RESOURCE_KEYS = {"latency": "latency_ms", "size": "size_bytes", "memory": "model_memory_bytes"}


def select_proposals(groups, variants: dict[str, list[tuple[int, Any]]], predict: Callable[[Any], dict],
                     *, resource: str, goal: float, now: float) -> tuple[list[Proposal], bool]:
    """Per group, the smallest step whose predicted ``resource`` reaches ``goal``; ``(proposals, fallback)``.

    When no group reaches the goal in one step, each group's largest predicted gain (at least 1%) is
    proposed instead (``fallback`` True), so budgets reachable only by shrinking several groups are reached.
    """
    key = RESOURCE_KEYS[resource]
    reaching, fallback = [], []
    for index, group in enumerate(groups):
        best = None
        for width, variant in variants[group.name]:
            predicted = predict(variant)
            value = predicted[key]
            if value <= goal:
                reaching.append(Proposal(index, group, width, variant, predicted))
                break  # the smallest step in this group that reaches the target
            if value < now * 0.99 and (best is None or value < best[0]):
                best = (value, Proposal(index, group, width, variant, predicted))
        else:
            if best is not None:
                fallback.append(best[1])
    return (reaching, False) if reaching else (fallback, True)


def flops_proposal(model, group_name: str, *, input_shape, step_ratio: float, width_step_ratio: float = 0.125,
                   min_width_ratio: float = 0.25, original_width: int | None = None) -> int | None:
    """The width a FLOPs-driven NetAdapt step would give ``group_name``: the smallest step that cuts the
    model's conv MACs by ``step_ratio`` (for comparison with the measured choice; the search never uses it)."""
    from edgekit.compress.prune import PruneConfig, dependency_groups, prune_model
    from edgekit.compress.stats import count_macs

    group = next(g for g in dependency_groups(model, input_shape=input_shape) if g.name == group_name)
    original = original_width or group.channels
    step = max(1, round(original * width_step_ratio))
    floor = max(1, math.ceil(original * min_width_ratio))
    base = count_macs(model, input_shape, linear=False)
    for w in [original - k * step for k in range(1, original // step + 1)]:
        if w < floor or w >= group.channels:
            continue
        ratio = (group.channels - w) / group.channels
        pruned = prune_model(model, PruneConfig(ratio=0.0, layer_ratios={group_name: ratio}),
                             input_shape=input_shape).model
        if count_macs(pruned, input_shape, linear=False) <= base * (1 - step_ratio):
            return w
    return None
