"""Per-layer int8 or float, decided by what int8 buys on the device and what it costs in accuracy.

The compress stage quantizes every Conv2d/Linear (``quantize_model``: BN folded, int8 weights,
calibrated activations).  Here each layer can be put back to float (its BN-folded float twin), so
the model becomes a per-layer mix:

1. the float model and the all-int8 model are compiled and measured on the device;
2. if int8 buys no latency there (today TVM runs the int8 layers as fake-quantized fp32 kernels,
   DESIGN.md section 8, so it usually costs latency), every layer stays float and the measurements
   say why;
3. otherwise layers go back to float, greedily, the one whose return recovers the most held-out
   accuracy first, until the accuracy is within ``max_drop`` of float; the mix is measured on the
   device and kept only if it is still faster than float.
"""

from __future__ import annotations

import copy
from typing import Any, Callable


def _set_module(model, dotted: str, new) -> None:
    parent_name, _, attr = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def quantized_layer_names(qmodel) -> list[str]:
    from edgekit.compress.quantize import quant_classes

    classes = quant_classes()
    return [name for name, mod in qmodel.named_modules() if isinstance(mod, classes)]


def mix(qmodel, folded, float_layers) -> Any:
    """A copy of the int8 model with ``float_layers`` replaced by their float (BN-folded) twins."""
    mixed = copy.deepcopy(qmodel)
    for name in float_layers:
        _set_module(mixed, name, copy.deepcopy(folded.get_submodule(name)))
    return mixed.eval()


def choose_int8_layers(model, *, calibration_data, accuracy_fn: Callable[[Any], float],
                       measure_fn: Callable[[Any], dict], max_drop: float = 0.005) -> dict[str, Any]:
    """The per-layer choice for ``model``; ``measure_fn(model)`` -> {"latency_ms", "source", ...} on the device."""
    from edgekit.compress.quantize import fold_batchnorm, quantize_model

    folded = fold_batchnorm(model)
    qmodel = quantize_model(model, calibration_data)
    names = quantized_layer_names(qmodel)
    float_m = measure_fn(folded)
    int8_m = measure_fn(qmodel)
    acc_float = accuracy_fn(folded)
    acc_int8 = accuracy_fn(qmodel)
    out: dict[str, Any] = {"float": {"latency_ms": float_m["latency_ms"], "val_accuracy": acc_float},
                           "int8": {"latency_ms": int8_m["latency_ms"], "val_accuracy": acc_int8},
                           "max_drop": max_drop}
    if int8_m["latency_ms"] >= float_m["latency_ms"]:
        out.update(layers={n: "float" for n in names}, model=None,
                   reason=(f"int8 buys no latency on the device ({int8_m['latency_ms']:.3f} ms vs "
                           f"{float_m['latency_ms']:.3f} ms float): every layer stays float"))
        return out
    float_layers: list[str] = []
    acc = acc_int8
    while acc < acc_float - max_drop and len(float_layers) < len(names):
        trials = [(accuracy_fn(mix(qmodel, folded, float_layers + [n])), n) for n in names if n not in float_layers]
        acc, best = max(trials)
        float_layers.append(best)
    mixed = mix(qmodel, folded, float_layers)
    mixed_m = measure_fn(mixed)
    if mixed_m["latency_ms"] >= float_m["latency_ms"]:
        out.update(layers={n: "float" for n in names}, model=None,
                   reason=(f"the int8/float mix that keeps accuracy ({len(float_layers)} float layers) is not "
                           f"faster than float on the device ({mixed_m['latency_ms']:.3f} vs "
                           f"{float_m['latency_ms']:.3f} ms)"))
        return out
    out.update(layers={n: ("float" if n in float_layers else "int8") for n in names}, model=mixed,
               mixed={"latency_ms": mixed_m["latency_ms"], "val_accuracy": acc},
               reason=f"int8 in {len(names) - len(float_layers)} of {len(names)} layers buys "
                      f"{float_m['latency_ms'] - mixed_m['latency_ms']:.3f} ms for {acc_float - acc:.4f} accuracy")
    return out
