"""Build a model for this machine and check it against torch: the schedule and rewrite tests' common step."""

from __future__ import annotations

from pathlib import Path


def build_matches_torch(model, shape, out_dir: str | Path):
    """Build ``model`` for the host, run it, and return the artifact, after checking that its reference output
    is torch's on the reference input and that the compiled output is within 1e-4 of the output's scale."""
    import numpy as np
    import torch

    from edgekit.compile import compile_model
    from edgekit.run import run_artifact

    artifact = compile_model(model, "host", input_shapes=[shape], out_dir=out_dir)
    report = run_artifact(artifact, warmup=0, repeats=1)
    reference = np.load(artifact.path / "reference.npz")
    with torch.no_grad():
        expected = model(torch.from_numpy(reference["in0"])).numpy()
    np.testing.assert_allclose(reference["out0"], expected, atol=1e-6 * (np.abs(expected).max() + 1))
    scale = float(np.abs(expected).max()) or 1.0
    assert report.output_check["passed"]
    assert report.output_check["max_abs_error"] <= 1e-4 * scale
    return artifact
