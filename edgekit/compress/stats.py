"""Model size figures used in every compression report: params, MACs, bytes."""

from __future__ import annotations

import io


def count_params(model) -> int:
    """Trainable-shaped parameters, counting int8 weight buffers of quantized layers too."""
    n = sum(p.numel() for p in model.parameters())
    for name, buf in model.named_buffers():
        if name.endswith("weight_int8"):
            n += buf.numel()
    return int(n)


def count_macs(model, input_shape=(1, 1, 28, 28), *, linear: bool = True) -> int:
    """Multiply-accumulates of one forward pass at ``input_shape``: conv layers, and linear ones unless
    ``linear=False`` (the conv-only figure a FLOPs-driven NetAdapt step compares).  edgekit's only MAC counter."""
    import torch
    import torch.nn as nn

    total = 0

    def conv_hook(mod, inp, out):
        nonlocal total
        kernel = mod.kernel_size[0] * mod.kernel_size[1]
        total += out.numel() // out.shape[0] * (mod.in_channels // mod.groups) * kernel

    def linear_hook(mod, inp, out):
        nonlocal total
        total += out.numel() // out.shape[0] * mod.in_features

    hooks = []
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d) or getattr(mod, "_edgekit_macs", None) == "conv2d":
            hooks.append(mod.register_forward_hook(conv_hook))
        elif linear and (isinstance(mod, nn.Linear) or getattr(mod, "_edgekit_macs", None) == "linear"):
            hooks.append(mod.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return int(total // input_shape[0]) if input_shape[0] > 1 else int(total)


def state_dict_bytes(model) -> int:
    """Size of the serialized state_dict: what shipping the weights costs."""
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def sparsity_ratio(model) -> float:
    """Fraction of exactly-zero weights in conv and linear layers."""
    import torch.nn as nn

    zeros = total = 0
    for mod in model.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            zeros += int((mod.weight == 0).sum())
            total += mod.weight.numel()
    return zeros / total if total else 0.0
