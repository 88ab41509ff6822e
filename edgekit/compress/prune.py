"""Structured pruning that physically removes channels, driven by a dependency graph.

One module of ~700 lines because it is one algorithm: the graph walk, the channel spaces it builds
and the slicing that applies them share one data model and are only correct together.

The model is traced with torch.fx and the graph is walked with real shapes
(ShapeProp).  Every conv/linear output opens a *channel space*; the walk carries, for
each tensor, which dimension holds channels and which spaces (with offsets, after a
concatenation, and a repeat factor, after a flatten) make it up.  Ops that tie spaces
together merge them (union-find):

* residual ``add``/``mul``/``sub`` of two tracked tensors: the two spaces become one group;
* ``cat`` along the channel dim: the result is the concatenation of the input segments;
* depthwise conv, BatchNorm, LayerNorm over the channel dim, activations, pooling:
  channels pass through (and the layer is sliced with them);
* ``flatten``/``view``/``reshape`` that merges the channel dim with the dims after it:
  each channel becomes ``H*W`` consecutive features of the following Linear;
* grouped (non-depthwise) convs, attention, unknown modules and ops, the model input
  and the model output: their spaces are *frozen* (never pruned), which keeps the
  pruned model exact in shape and runnable.

Each group of coupled channels is then scored (L1/L2 magnitude of every member's
slice, or BatchNorm |gamma|), the lowest channels are dropped from every member
at once, and the layers are rebuilt smaller.  The result is an ordinary dense model
of the same class: no masks, no sparse kernels.

We wrote this instead of using Torch-Pruning: Torch-Pruning 1.6.1 runs with torch 2.13
(checked), but it traces autograd ``grad_fn`` chains rather than an FX/export graph and
adds a dependency; the walk here is ~400 lines, covers the zoo's and the test models'
patterns, and freezes (instead of guessing) on anything it does not understand.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import operator
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import RecipeError, UnsupportedOperatorError

IMPORTANCE = ("l1", "l2", "bn_scale")


@dataclass(frozen=True, kw_only=True)
class PruneConfig:
    """Structured pruning options.

    ratio: fraction of each prunable group's channels to remove (0 <= ratio < 1).
    layer_ratios: module-name glob -> ratio for the groups those layers produce.
    exclude: module-name globs whose output channels are never removed.
    global_ranking: rank channels of all groups together (scores normalised per group) and
      remove ``ratio`` of all prunable channels, at most ``max_group_ratio`` of any group.
    round_to: keep channel counts a multiple of this (SIMD-friendly widths).
    """

    ratio: float = 0.5
    importance: str = "l1"
    layer_ratios: dict[str, float] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    global_ranking: bool = False
    max_group_ratio: float = 0.9
    round_to: int = 1

    def __post_init__(self):
        for name, r in [("ratio", self.ratio), *[(f"layer_ratios[{k!r}]", v) for k, v in self.layer_ratios.items()]]:
            if not isinstance(r, (int, float)) or not 0.0 <= r < 1.0:
                raise RecipeError(f"prune {name} must be a number in [0, 1), got {r!r}",
                                  hint="a ratio is the fraction of channels removed: 0.5 removes half")
        if self.importance not in IMPORTANCE:
            raise RecipeError(f"unknown prune importance {self.importance!r}; available: {', '.join(IMPORTANCE)}")
        if not 0.0 < self.max_group_ratio < 1.0:
            raise RecipeError(f"prune max_group_ratio must be in (0, 1), got {self.max_group_ratio!r}")
        if self.global_ranking and self.layer_ratios:
            raise RecipeError("prune: global_ranking and layer_ratios cannot be combined",
                              hint="global ranking decides each layer's share itself")
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise RecipeError(f"prune round_to must be an integer >= 1, got {self.round_to!r}")
        object.__setattr__(self, "exclude", tuple(self.exclude))


# ---------------------------------------------------------------- the channel graph

class _Space:
    __slots__ = ("id", "length", "parent", "frozen", "why")

    def __init__(self, sid: int, length: int):
        self.id, self.length, self.parent, self.frozen, self.why = sid, length, self, False, ""

    def root(self) -> "_Space":
        s = self
        while s.parent is not s:
            s.parent = s.parent.parent
            s = s.parent
        return s


@dataclass(frozen=True)
class _Seg:
    space: _Space
    length: int
    repeat: int = 1  # features per channel (a flatten of C x H x W gives H*W)


@dataclass(frozen=True)
class _Tracked:
    dim: int  # index of the channel dimension (non-negative)
    segs: tuple[_Seg, ...]


@dataclass
class _User:
    module: str
    kind: str  # conv_out conv_in dwconv linear_out linear_in bn ln
    segs: tuple[_Seg, ...]


@dataclass(frozen=True, kw_only=True)
class ChannelGroup:
    """Channels that must be removed together (one index set for every member)."""

    name: str
    channels: int
    members: tuple[str, ...]  # "module:kind"
    frozen: bool
    why_frozen: str = ""


_PASS_MODULES = ("ReLU", "ReLU6", "GELU", "SiLU", "Sigmoid", "Tanh", "Hardswish", "Hardsigmoid", "LeakyReLU",
                 "ELU", "Mish", "Dropout", "Dropout2d", "Identity", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d",
                 "AdaptiveMaxPool2d", "Softplus")
_PASS_FUNCS = {"relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "leaky_relu", "elu",
               "dropout", "dropout2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d",
               "contiguous", "clone", "mish", "softplus", "relu_", "hardtanh", "neg", "abs"}
_BINARY = {"add", "sub", "mul", "iadd", "add_", "mul_", "truediv", "div"}
_RESHAPE = {"flatten", "view", "reshape"}


class _Walker:
    def __init__(self, gm, shapes):
        self.gm = gm
        self.shapes = shapes  # node name -> shape tuple or None
        self.modules = dict(gm.named_modules())
        self.spaces: list[_Space] = []
        self.users: list[_User] = []
        self.calls: dict[str, int] = {}

    def new_space(self, n: int, frozen: bool = False, why: str = "") -> _Space:
        s = _Space(len(self.spaces), n)
        s.frozen, s.why = frozen, why
        self.spaces.append(s)
        return s

    def freeze(self, value, why: str):
        if isinstance(value, _Tracked):
            for seg in value.segs:
                r = seg.space.root()
                if not r.frozen:
                    r.frozen, r.why = True, why

    def union(self, a: _Space, b: _Space):
        ra, rb = a.root(), b.root()
        if ra is rb:
            return
        rb.parent = ra
        if rb.frozen and not ra.frozen:
            ra.frozen, ra.why = True, rb.why

    def fresh(self, node, frozen=True, why="") -> _Tracked | None:
        """A new (by default frozen) space for the channel dim 1 (or last) of an unknown op's output."""
        shape = self.shapes.get(node.name)
        if not shape or len(shape) < 2:
            return None
        dim = 1 if len(shape) == 4 else len(shape) - 1
        return _Tracked(dim, (_Seg(self.new_space(shape[dim], frozen, why or f"output of {node.name}"),
                                   shape[dim]),))

    # -- the walk
    def run(self):
        import torch.fx as fx

        env: dict[str, Any] = {}

        def val(a):
            return env.get(a.name) if isinstance(a, fx.Node) else None

        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                env[node.name] = self.fresh(node, True, "model input")
            elif node.op == "get_attr":
                env[node.name] = None
            elif node.op == "output":
                for a in _flat_nodes(node.args):
                    self.freeze(env.get(a.name), "model output")
            elif node.op == "call_module":
                env[node.name] = self.call_module(node, val)
            elif node.op in ("call_function", "call_method"):
                env[node.name] = self.call_op(node, val)
        for name, count in self.calls.items():
            if count > 1:
                for u in self.users:
                    if u.module == name:
                        for seg in u.segs:
                            self.freeze(_Tracked(0, (seg,)), f"module {name} is called {count} times")

    def _freeze_args(self, node, val, why):
        for a in _flat_nodes((node.args, node.kwargs)):
            self.freeze(val(a), why)

    def call_module(self, node, val):
        import torch.nn as nn

        mod = self.modules[node.target]
        name = node.target
        self.calls[name] = self.calls.get(name, 0) + 1
        x = val(node.args[0]) if node.args else None
        shape_in = self.shapes.get(node.args[0].name) if node.args and hasattr(node.args[0], "name") else None
        shape_out = self.shapes.get(node.name)
        cls = type(mod).__name__
        if isinstance(mod, nn.Conv2d):
            ok_in = isinstance(x, _Tracked) and x.dim == 1
            if mod.groups == 1:
                if ok_in:
                    self.users.append(_User(name, "conv_in", x.segs))
                else:
                    self.freeze(x, f"{name} input")
                s = self.new_space(mod.out_channels)
                self.users.append(_User(name, "conv_out", (_Seg(s, mod.out_channels),)))
                return _Tracked(1, (_Seg(s, mod.out_channels),))
            if mod.groups == mod.in_channels == mod.out_channels and ok_in:
                self.users.append(_User(name, "dwconv", x.segs))
                return x
            self.freeze(x, f"grouped conv {name} (groups={mod.groups})")
            return self.fresh(node, True, f"grouped conv {name} (groups={mod.groups})")
        if isinstance(mod, nn.Linear):
            ok_in = isinstance(x, _Tracked) and shape_in is not None and x.dim == len(shape_in) - 1
            if ok_in:
                self.users.append(_User(name, "linear_in", x.segs))
            else:
                self.freeze(x, f"{name} input")
            s = self.new_space(mod.out_features)
            self.users.append(_User(name, "linear_out", (_Seg(s, mod.out_features),)))
            return _Tracked(len(shape_out) - 1, (_Seg(s, mod.out_features),))
        if isinstance(mod, nn.BatchNorm2d) or isinstance(mod, nn.BatchNorm1d):
            if isinstance(x, _Tracked) and x.dim == 1 and mod.num_features == _seg_len(x.segs):
                self.users.append(_User(name, "bn", x.segs))
                return x
            self.freeze(x, f"{name} input")
            return self.fresh(node, True, f"{name}")
        if isinstance(mod, nn.LayerNorm):
            if (isinstance(x, _Tracked) and len(mod.normalized_shape) == 1 and shape_in is not None
                    and x.dim == len(shape_in) - 1):
                if mod.elementwise_affine:
                    self.users.append(_User(name, "ln", x.segs))
                return x
            self.freeze(x, f"{name} input")
            return self.fresh(node, True, f"{name}")
        if isinstance(mod, nn.Flatten):
            return self.reshape(x, shape_in, shape_out, node)
        if cls in _PASS_MODULES and not any(True for _ in mod.parameters()):
            return self.passthrough(x, shape_in, shape_out, node)
        self._freeze_args(node, val, f"unsupported module {name} ({cls})")
        return self.fresh(node, True, f"output of unsupported module {name} ({cls})")

    def passthrough(self, x, shape_in, shape_out, node):
        if (isinstance(x, _Tracked) and shape_in is not None and shape_out is not None
                and len(shape_in) == len(shape_out) and shape_in[x.dim] == shape_out[x.dim]):
            return x
        self.freeze(x, f"{node.name} changes the channel dim")
        return self.fresh(node, True)

    def reshape(self, x, shape_in, shape_out, node):
        if not isinstance(x, _Tracked) or shape_in is None or shape_out is None:
            self.freeze(x, f"{node.name}")
            return self.fresh(node, True)
        d = x.dim
        if tuple(shape_in) == tuple(shape_out):
            return x
        pre = math.prod(shape_in[:d])
        for d2 in range(len(shape_out)):
            if math.prod(shape_out[:d2]) != pre:
                continue
            if shape_out[d2] % shape_in[d]:
                continue
            inner = shape_out[d2] // shape_in[d]
            acc = 1
            for k in range(d + 1, len(shape_in) + 1):
                if acc == inner:
                    segs = tuple(_Seg(s.space, s.length, s.repeat * inner) for s in x.segs)
                    return _Tracked(d2, segs)
                if k < len(shape_in):
                    acc *= shape_in[k]
            break
        self.freeze(x, f"{node.name} splits or interleaves the channel dim")
        return self.fresh(node, True)

    def call_op(self, node, val):
        target = node.target
        name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
        args = list(node.args)
        shape_out = self.shapes.get(node.name)
        first = args[0] if args else None
        x = val(first) if first is not None else None
        shape_in = self.shapes.get(first.name) if hasattr(first, "name") else None
        if name in _PASS_FUNCS:
            others = [a for a in _flat_nodes((args[1:], node.kwargs)) if isinstance(val(a), _Tracked)]
            if not others:
                return self.passthrough(x, shape_in, shape_out, node) if isinstance(x, _Tracked) else None
        if name in _BINARY or target in (operator.add, operator.mul, operator.sub, operator.truediv):
            return self.binary(node, args, val, shape_out)
        if name == "cat":
            return self.cat(node, val, shape_out)
        if name in _RESHAPE:
            if isinstance(x, _Tracked):
                return self.reshape(x, shape_in, shape_out, node)
            return None
        if name in ("mean", "sum", "amax") and isinstance(x, _Tracked) and shape_in is not None:
            dims = node.kwargs.get("dim", args[1] if len(args) > 1 else None)
            keep = node.kwargs.get("keepdim", args[2] if len(args) > 2 else False)
            if dims is not None:
                dims = [dims] if isinstance(dims, int) else list(dims)
                dims = [dd % len(shape_in) for dd in dims]
                if x.dim not in dims:
                    new_dim = x.dim if keep else x.dim - sum(1 for dd in dims if dd < x.dim)
                    return _Tracked(new_dim, x.segs)
        if name in ("size", "dim", "getattr", "numel") or shape_out is None:
            return None
        self._freeze_args(node, val, f"unsupported op {name} at {node.name}")
        return self.fresh(node, True, f"output of unsupported op {name}")

    def binary(self, node, args, val, shape_out):
        tracked = [val(a) for a in args[:2] if isinstance(val(a), _Tracked)]
        nodes_args = [a for a in args[:2] if hasattr(a, "name")]
        if len(tracked) == 1:
            x = tracked[0]
            other = [a for a in nodes_args if not isinstance(val(a), _Tracked)]
            if other:
                # a tensor without channel bookkeeping (a constant, a parameter): its
                # per-channel values could not be sliced, so keep the channels.
                shp = self.shapes.get(other[0].name)
                if shp and len(shp) and not all(v == 1 for v in shp):
                    self.freeze(x, f"{node.name} combines channels with an untracked tensor")
                    return self.fresh(node, True)
            return x
        if len(tracked) == 2:
            a, b = tracked
            sa = self.shapes.get(args[0].name)
            sb = self.shapes.get(args[1].name)
            if (a.dim == b.dim or (sa and sb and len(sa) - a.dim == len(sb) - b.dim)) and _same_layout(a, b):
                for s1, s2 in zip(a.segs, b.segs):
                    self.union(s1.space, s2.space)
                return a if (sa and shape_out and len(sa) == len(shape_out)) else b
            self.freeze(a, f"{node.name} combines differently laid-out channels")
            self.freeze(b, f"{node.name} combines differently laid-out channels")
            return self.fresh(node, True)
        return None

    def cat(self, node, val, shape_out):
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        vals = [val(t) for t in tensors]
        shp = self.shapes.get(tensors[0].name)
        if shp is None or not all(isinstance(v, _Tracked) for v in vals):
            for v in vals:
                self.freeze(v, f"{node.name} concatenates untracked tensors")
            return self.fresh(node, True)
        dim = dim % len(shp)
        if all(v.dim == dim for v in vals):
            return _Tracked(dim, tuple(s for v in vals for s in v.segs))
        for v in vals:
            self.freeze(v, f"{node.name} concatenates along another dim")
        return self.fresh(node, True)


def _seg_len(segs) -> int:
    return sum(s.length * s.repeat for s in segs)


def _same_layout(a: _Tracked, b: _Tracked) -> bool:
    return len(a.segs) == len(b.segs) and all(
        s.length == t.length and s.repeat == t.repeat for s, t in zip(a.segs, b.segs))


def _flat_nodes(obj):
    import torch.fx as fx

    if isinstance(obj, fx.Node):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _flat_nodes(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _flat_nodes(o)


def _trace(model, example_input):
    import torch
    import torch.fx as fx
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds here
        raise UnsupportedOperatorError(
            f"cannot trace {type(model).__name__} with torch.fx for pruning: {type(exc).__name__}: {exc}",
            hint="data-dependent Python control flow cannot be traced; move it out of forward()") from None
    with torch.no_grad():
        ShapeProp(gm).propagate(example_input)
    shapes = {}
    for n in gm.graph.nodes:
        meta = n.meta.get("tensor_meta")
        shapes[n.name] = tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None
    return gm, shapes


# ---------------------------------------------------------------- the pruner

@dataclass(frozen=True, kw_only=True)
class PruneResult:
    model: Any
    groups: tuple[ChannelGroup, ...]
    removed: dict[str, int]  # group name -> channels removed
    params_before: int
    params_after: int

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"params_before": self.params_before, "params_after": self.params_after,
                "removed": self.removed,
                "groups": [{"name": g.name, "channels": g.channels, "frozen": g.frozen, "why_frozen": g.why_frozen,
                            "members": list(g.members)} for g in self.groups]}


class DependencyGraph:
    """The channel groups of a model, from an FX trace at ``example_input``'s shape."""

    def __init__(self, model, example_input):
        gm, shapes = _trace(model, example_input)
        self.model = model
        self.walker = _Walker(gm, shapes)
        self.walker.run()
        self.modules = dict(model.named_modules())

    def roots(self) -> dict[int, list[_Space]]:
        by_root: dict[int, list[_Space]] = {}
        for s in self.walker.spaces:
            by_root.setdefault(s.root().id, []).append(s)
        return by_root

    def groups(self) -> list[tuple[_Space, ChannelGroup]]:
        out = []
        for rid, spaces in self.roots().items():
            root = self.walker.spaces[rid].root()
            members = []
            for u in self.walker.users:
                if any(seg.space.root() is root for seg in u.segs):
                    members.append(f"{u.module}:{u.kind}")
            producers = [m.split(":")[0] for m in members if m.endswith("_out")]
            if not producers:
                continue
            name = producers[0]
            out.append((root, ChannelGroup(name=name, channels=root.length, members=tuple(members),
                                           frozen=root.frozen, why_frozen=root.why)))
        return out

    def _scores(self, root: _Space, importance: str):
        """One score per channel of ``root``'s group: member scores normalised by their mean, summed."""
        import torch

        total = torch.zeros(root.length)
        used_bn = False
        for u in self.walker.users:
            if importance == "bn_scale" and u.kind != "bn":
                continue
            if importance != "bn_scale" and u.kind in ("bn", "ln"):
                continue
            per_feature = self._feature_scores(u, importance)
            offset = 0
            for seg in u.segs:
                n = seg.length * seg.repeat
                if seg.space.root() is root:
                    part = per_feature[offset:offset + n].reshape(seg.length, seg.repeat).sum(1)
                    mean = part.mean()
                    total += part / mean if mean > 0 else part
                    used_bn = used_bn or u.kind == "bn"
                offset += n
        if importance == "bn_scale" and not used_bn:
            return self._scores(root, "l1")
        return total

    def _feature_scores(self, u: _User, importance: str):
        mod = self.modules[u.module]
        w = mod.weight.detach()
        p = 2 if importance == "l2" else 1
        if u.kind == "bn":
            return w.abs()
        if u.kind in ("conv_out", "linear_out", "dwconv", "ln"):
            return w.reshape(w.shape[0], -1).norm(p=p, dim=1) if w.dim() > 1 else w.abs()
        if u.kind in ("conv_in", "linear_in"):
            return w.transpose(0, 1).reshape(w.shape[1], -1).norm(p=p, dim=1)
        raise AssertionError(u.kind)


def prune_model(model, config: PruneConfig = PruneConfig(), *, example_input=None,
                input_shape=(1, 1, 28, 28)) -> PruneResult:
    """Remove channels from a copy of ``model``; the original is left untouched."""
    import torch

    from edgekit.compress.stats import count_params

    model = copy.deepcopy(model).eval()
    if example_input is None:
        example_input = torch.randn(*input_shape)
    with torch.no_grad():
        out_before = model(example_input)
    params_before = count_params(model)
    graph = DependencyGraph(model, example_input)
    names = set(graph.modules)
    for pattern in list(config.exclude) + list(config.layer_ratios):
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise RecipeError(f"prune: no layer matches {pattern!r}",
                              hint=f"layers: {', '.join(sorted(n for n in names if n)[:30])}")
    groups = graph.groups()
    # exclusions freeze the groups their layers produce
    for root, g in groups:
        producers = [m.split(":")[0] for m in g.members if m.endswith("_out")]
        if any(fnmatch.fnmatchcase(p, pat) for p in producers for pat in config.exclude):
            root.frozen, root.why = True, "excluded by config"

    keep: dict[int, Any] = {}
    removed: dict[str, int] = {}
    prunable = [(root, g) for root, g in groups if not root.frozen]
    scores = {root.id: graph._scores(root, config.importance) for root, _ in prunable}

    def group_ratio(g: ChannelGroup) -> float:
        producers = [m.split(":")[0] for m in g.members if m.endswith("_out")]
        specific = [r for pat, r in config.layer_ratios.items() for p in producers if fnmatch.fnmatchcase(p, pat)]
        return max(specific) if specific else config.ratio

    def n_keep(n: int, ratio: float) -> int:
        k = n - int(math.floor(ratio * n + 1e-9))
        k = max(config.round_to, int(math.ceil(k / config.round_to)) * config.round_to) if config.round_to > 1 else k
        return max(1, min(n, k))

    if config.global_ranking:
        pool = []
        for root, g in prunable:
            s = scores[root.id]
            s = s / s.mean() if float(s.mean()) > 0 else s
            pool += [(float(v), root.id, i) for i, v in enumerate(s)]
        pool.sort()
        budget = int(config.ratio * len(pool))
        floor = {root.id: n_keep(root.length, config.max_group_ratio) for root, _ in prunable}
        drop: dict[int, set] = {root.id: set() for root, _ in prunable}
        lengths = {root.id: root.length for root, _ in prunable}
        for _, rid, i in pool:
            if budget <= 0:
                break
            if lengths[rid] - len(drop[rid]) > floor[rid]:
                drop[rid].add(i)
                budget -= 1
        for root, g in prunable:
            keep[root.id] = sorted(set(range(root.length)) - drop[root.id])
    else:
        for root, g in prunable:
            k = n_keep(root.length, group_ratio(g))
            order = torch.argsort(scores[root.id], descending=True)[:k]
            keep[root.id] = sorted(int(i) for i in order)
    for root, g in prunable:
        if len(keep[root.id]) < root.length:
            removed[g.name] = root.length - len(keep[root.id])

    _apply(graph, keep)
    with torch.no_grad():
        out_after = model(example_input)
    if tuple(out_after.shape) != tuple(out_before.shape):
        raise AssertionError(f"pruning changed the output shape {tuple(out_before.shape)} -> {tuple(out_after.shape)}")
    final_groups = tuple(
        ChannelGroup(name=g.name, channels=len(keep.get(root.id, range(root.length))), members=g.members,
                     frozen=root.frozen, why_frozen=root.why) for root, g in groups)
    return PruneResult(model=model, groups=final_groups, removed=removed, params_before=params_before,
                       params_after=count_params(model))


def _indices(segs, keep: dict[int, Any]):
    """Feature indices that survive, for a layer whose channel dim is made of ``segs``."""
    idx, offset = [], 0
    for seg in segs:
        kept = keep.get(seg.space.root().id)
        channels = range(seg.length) if kept is None else kept
        for c in channels:
            base = offset + c * seg.repeat
            idx.extend(range(base, base + seg.repeat))
        offset += seg.length * seg.repeat
    return idx, offset


def _apply(graph: DependencyGraph, keep: dict[int, Any]) -> None:
    import torch
    import torch.nn as nn

    with torch.no_grad():
        for u in graph.walker.users:
            idx, full = _indices(u.segs, keep)
            if len(idx) == full:
                continue
            mod = graph.modules[u.module]
            t = torch.tensor(idx, dtype=torch.long)

            def cut(param, dim):
                return nn.Parameter(param.data.index_select(dim, t).clone(), requires_grad=param.requires_grad)

            if u.kind in ("conv_out", "linear_out", "dwconv"):
                mod.weight = cut(mod.weight, 0)
                if mod.bias is not None:
                    mod.bias = cut(mod.bias, 0)
                if u.kind == "conv_out":
                    mod.out_channels = len(idx)
                elif u.kind == "linear_out":
                    mod.out_features = len(idx)
                else:
                    mod.in_channels = mod.out_channels = mod.groups = len(idx)
            elif u.kind == "conv_in":
                mod.weight = cut(mod.weight, 1)
                mod.in_channels = len(idx)
            elif u.kind == "linear_in":
                mod.weight = cut(mod.weight, 1)
                mod.in_features = len(idx)
            elif u.kind == "bn":
                if mod.affine:
                    mod.weight = cut(mod.weight, 0)
                    mod.bias = cut(mod.bias, 0)
                if mod.running_mean is not None:
                    mod.running_mean = mod.running_mean.index_select(0, t).clone()
                    mod.running_var = mod.running_var.index_select(0, t).clone()
                mod.num_features = len(idx)
            elif u.kind == "ln":
                mod.weight = cut(mod.weight, 0)
                if mod.bias is not None:
                    mod.bias = cut(mod.bias, 0)
                mod.normalized_shape = (len(idx),)


def dependency_groups(model, example_input=None, input_shape=(1, 1, 28, 28)) -> list[ChannelGroup]:
    """The model's channel groups (what would be pruned together, and what is frozen and why)."""
    import torch

    if example_input is None:
        example_input = torch.randn(*input_shape)
    return [g for _, g in DependencyGraph(copy.deepcopy(model).eval(), example_input).groups()]


# ---------------------------------------------------------------- unstructured

@dataclass(frozen=True, kw_only=True)
class SparsifyConfig:
    """Unstructured magnitude pruning: zero the smallest weights, shapes unchanged.

    Dense kernels do the same work on zeros: this shrinks a compressed file, not latency.
    """

    sparsity: float = 0.5
    scope: str = "global"  # or "layer"

    def __post_init__(self):
        if not isinstance(self.sparsity, (int, float)) or not 0.0 <= self.sparsity < 1.0:
            raise RecipeError(f"sparsify sparsity must be in [0, 1), got {self.sparsity!r}")
        if self.scope not in ("global", "layer"):
            raise RecipeError(f"sparsify scope must be 'global' or 'layer', got {self.scope!r}")


def sparsify_model(model, config: SparsifyConfig = SparsifyConfig()):
    """A copy of ``model`` with the smallest-magnitude conv/linear weights set to zero."""
    import torch
    import torch.nn as nn

    model = copy.deepcopy(model)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        if config.scope == "global":
            allw = torch.cat([m.weight.abs().flatten() for m in layers])
            k = int(config.sparsity * allw.numel())
            if k > 0:
                thr = allw.kthvalue(k).values
                for m in layers:
                    m.weight[m.weight.abs() <= thr] = 0.0
        else:
            for m in layers:
                k = int(config.sparsity * m.weight.numel())
                if k > 0:
                    thr = m.weight.abs().flatten().kthvalue(k).values
                    m.weight[m.weight.abs() <= thr] = 0.0
    return model
