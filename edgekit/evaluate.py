"""The score of a torch model or of a compiled artifact on a data set: top-1 accuracy for class labels,
R^2 for float targets, or the data's own metric (edgekit.data.metrics; ``--metric``).

For an artifact the library is loaded with the TVM runtime on this host and fed in
batches of the artifact's compiled batch size (the last batch is padded with zeros and
the padding's outputs dropped), so the figure is that of the code that gets deployed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekit.errors import ArtifactError, InputShapeError


def evaluate(model_or_artifact: Any, data, *, batch_size: int = 500) -> float:
    """``data.score`` (top-1 accuracy in [0, 1] for class labels) of an ``nn.Module``, a ``CompiledArtifact``
    or an artifact path."""
    from edgekit.artifacts import CompiledArtifact

    if isinstance(model_or_artifact, (str, Path)):
        model_or_artifact = CompiledArtifact.open(model_or_artifact)
    if isinstance(model_or_artifact, CompiledArtifact):
        return _evaluate_artifact(model_or_artifact, data)
    return _evaluate_torch(model_or_artifact, data, batch_size)


def _evaluate_torch(model, data, batch_size: int) -> float:
    return data.score(model_outputs(model, data, batch_size=batch_size))


def model_outputs(model, data, *, batch_size: int = 500):
    """The model's outputs for every example of ``data``, in order (a tensor, or a tuple/dict of them)."""
    import torch

    was_training = model.training
    model.eval()
    chunks = []
    try:
        with torch.no_grad():
            for x, _ in data.batches(batch_size):
                chunks.append(model(x))
    finally:
        model.train(was_training)
    return concat_outputs(chunks)


def concat_outputs(chunks):
    """Per-batch outputs joined along the batch: tensors, or tuples/dicts of tensors (several outputs)."""
    import torch

    if not chunks:
        return torch.zeros(0)
    first = chunks[0]
    if isinstance(first, dict):
        return {k: torch.cat([c[k] for c in chunks]) for k in first}
    if isinstance(first, (tuple, list)):
        return tuple(torch.cat([c[i] for c in chunks]) for i in range(len(first)))
    return torch.cat(chunks)


def artifact_predictor(artifact):
    """A function numpy batch (B, ...) -> numpy logits, running ``artifact`` on this host's CPU."""
    import numpy as np
    import tvm
    from tvm.runtime.vm import VirtualMachine

    if artifact.manifest["target"].get("kind", "cpu") != "cpu":
        raise ArtifactError(f"artifact {artifact.path} is for a {artifact.manifest['target']['kind']} target; "
                            "evaluate runs CPU artifacts on this host")
    spec = artifact.inputs[0]
    lib = tvm.runtime.load_module(str(artifact.library_path))
    vm = VirtualMachine(lib, tvm.cpu())
    batch = spec.shape[0]

    def predict(x):
        x = np.ascontiguousarray(x, dtype=spec.dtype)
        if tuple(x.shape[1:]) != tuple(spec.shape[1:]):
            raise InputShapeError(f"data shape {tuple(x.shape[1:])} does not match the artifact's input "
                                  f"{tuple(spec.shape)}")
        outs = []
        for start in range(0, x.shape[0], batch):
            chunk = x[start:start + batch]
            n = chunk.shape[0]
            if n < batch:
                chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), dtype=chunk.dtype)])
            out = vm["main"](tvm.runtime.tensor(chunk, tvm.cpu()))
            if isinstance(out, (list, tuple)) or not hasattr(out, "numpy"):
                out = out[0]
            outs.append(out.numpy()[:n])
        return np.concatenate(outs)

    return predict


def _evaluate_artifact(artifact, data) -> float:
    import torch

    predict = artifact_predictor(artifact)
    return data.score(torch.from_numpy(predict(data.x.numpy())))
