"""Distributed distillation under torchrun (gloo, CPU, loopback): `edgekit compress --nproc-per-node 2`.

Real parts only: the `edgekit` CLI, torch's torchrun, DDP and DistributedSampler, Fashion-MNIST from Debian's
dataset-fashion-mnist (small seeded subsets, through edgekit.data), the zoo's trained ResNet as the teacher,
and strace to see which process opened which file for writing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

RECIPE = """
[recipe]
name = "prune50-distill"
seed = 0

[[steps]]
kind = "prune"
ratio = 0.5

[[steps]]
kind = "distill"
epochs = {epochs}
val_size = 400
patience = 5
threads = 1
"""


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgekit.cli.main", *args]


def _fmnist_npz(directory: Path, train_size: int, test_size: int) -> Path:
    """Seeded subsets of Fashion-MNIST (edgekit.data), as the .npz form of --data."""
    from edgekit.data import load_dataset

    train = load_dataset("fashion-mnist", "train", limit=train_size, seed=1)
    test = load_dataset("fashion-mnist", "test", limit=test_size, seed=1)
    path = directory / f"fmnist-{train_size}-{test_size}.npz"
    np.savez(path, x=train.x.numpy(), y=train.y.numpy(), x_test=test.x.numpy(), y_test=test.y.numpy())
    return path


@pytest.fixture(scope="module")
def fmnist_npz(tmp_path_factory) -> Path:
    """3000 training and 2000 test images: enough for the 1-point comparison to mean something."""
    return _fmnist_npz(tmp_path_factory.mktemp("data"), 3000, 2000)


@pytest.fixture(scope="module")
def small_fmnist_npz(tmp_path_factory) -> Path:
    return _fmnist_npz(tmp_path_factory.mktemp("data"), 1200, 500)


def _recipe(tmp_path: Path, epochs: int) -> Path:
    path = tmp_path / f"recipe-{epochs}.toml"
    path.write_text(RECIPE.format(epochs=epochs))
    return path


def _compress(recipe: Path, data: Path, out: Path, *extra: str, prefix: tuple[str, ...] = ()):
    return subprocess.run([*prefix, *_cli("compress", "--recipe", str(recipe), "--model", "zoo:fmnist-resnet",
                                          "--data", str(data), "--out", str(out), "--json", *extra)],
                          capture_output=True, text=True, timeout=600)


def _network_binds(strace_log: Path) -> list[str]:
    """Every AF_INET/AF_INET6 bind() in the log, as the address text strace printed."""
    binds = re.findall(r'bind\(\d+, \{sa_family=AF_INET6?, [^}]*\}', strace_log.read_text())
    return [re.search(r'(inet_addr|inet_pton)\(([^)]*)\)', b).group(2) for b in binds]


def _files_opened_for_writing(strace_log: Path, under: Path) -> dict[int, set[str]]:
    """pid -> paths under ``under`` that the process opened with O_WRONLY, O_RDWR or O_CREAT."""
    writes: dict[int, set[str]] = {}
    pattern = re.compile(r'^(\d+)\s+openat\(AT_FDCWD, "([^"]+)", ([A-Z_|]+)')
    for line in strace_log.read_text().splitlines():
        m = pattern.match(line)
        if m and m.group(2).startswith(str(under)) and re.search(r"O_WRONLY|O_RDWR|O_CREAT", m.group(3)):
            writes.setdefault(int(m.group(1)), set()).add(m.group(2))
    return writes


def test_torchrun_two_processes_distil_like_one_and_only_rank_0_writes(tmp_path, fmnist_npz):
    if shutil.which("strace") is None:
        pytest.fail("strace is missing (tools/setup-system.sh installs it): it shows which process wrote which file")
    recipe = _recipe(tmp_path, epochs=3)
    one = _compress(recipe, fmnist_npz, tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    log = tmp_path / "strace.log"
    two = _compress(recipe, fmnist_npz, tmp_path / "two", "--nproc-per-node", "2",
                    prefix=("strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=openat,bind", "-e", "status=successful",
                            "-o", str(log)))
    assert two.returncode == 0, two.stderr[-3000:]
    report_one, report_two = json.loads(one.stdout), json.loads(two.stdout)

    distill = report_two["steps"][1]["detail"]
    assert distill["distributed"]["world_size"] == 2 and distill["distributed"]["backend"] == "gloo"
    assert distill["distributed"]["per_rank_batch_size"] == 64  # the recipe's global batch of 128, halved
    assert distill["epochs_run"] == report_one["steps"][1]["detail"]["epochs_run"] == 3
    pruned, acc_one, acc_two = (report_two["steps"][0]["accuracy"], report_one["after"]["accuracy"],
                                report_two["after"]["accuracy"])
    assert acc_two > pruned + 0.3, (pruned, acc_two)  # the distillation really trained the pruned student
    assert abs(acc_two - acc_one) <= 0.01, f"1 process {acc_one}, 2 processes {acc_two} (2000 test images)"

    rank0, rank1 = distill["distributed"]["rank_pids"]
    writers = _files_opened_for_writing(log, tmp_path / "two")
    checkpoints = tmp_path / "two" / "checkpoints" / "step2-distill"
    assert rank1 not in writers, f"rank 1 wrote {writers.get(rank1)}"
    assert {p for p in writers.get(rank0, ()) if not p.endswith(".tmp")} == set(), "rank 0 writes only via .tmp"
    assert {Path(p).name for p in writers[rank0]} == {"last.pt.tmp", "checkpoint.json.tmp", "result.pt.tmp"}
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint.json", "last.pt", "result.pt"]
    info = json.loads((checkpoints / "checkpoint.json").read_text())
    assert info["epoch"] == 3 and info["world_size"] == 2 and info["written_by_rank"] == 0

    binds = _network_binds(log)  # torchrun's store, gloo's pairs: loopback only
    assert binds and all(b == '"127.0.0.1"' for b in binds), binds


def _rank_processes(job_dir: Path) -> list[int]:
    """pids of live processes whose command line names ``job_dir`` (ranks and torchrun of that job)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(job_dir) in cmdline and "edgekit.compress.distributed" in cmdline:
                found.append(int(entry.name))
    return found


def _kill_after_the_first_checkpoint(recipe, data, out, nproc: int) -> Path:
    """Start ``edgekit compress`` with ``nproc`` processes, SIGKILL its whole session (the CLI, torchrun and the
    ranks at once: nothing gets to clean up) once the distillation step wrote a checkpoint; its directory."""
    checkpoints = out / "checkpoints" / "step2-distill"
    proc = subprocess.Popen(_cli("compress", "--recipe", str(recipe), "--model", "zoo:fmnist-resnet", "--data",
                                 str(data), "--out", str(out), "--nproc-per-node", str(nproc)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (checkpoints / "checkpoint.json").is_file():
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return checkpoints


def test_killed_distributed_run_resumes_from_its_checkpoint_and_finishes(tmp_path, small_fmnist_npz):
    fmnist_npz = small_fmnist_npz
    recipe = _recipe(tmp_path, epochs=4)
    out = tmp_path / "out"
    checkpoints = _kill_after_the_first_checkpoint(recipe, fmnist_npz, out, 2)
    time.sleep(2)
    assert _rank_processes(checkpoints) == [], "ranks outlived their torchrun"
    stopped_at = json.loads((checkpoints / "checkpoint.json").read_text())["epoch"]
    assert 1 <= stopped_at < 4 and not (out / "report.json").exists()

    resumed = _compress(recipe, fmnist_npz, out, "--nproc-per-node", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from the checkpoint of epoch {stopped_at}" in resumed.stderr
    detail = json.loads(resumed.stdout)["steps"][1]["detail"]
    assert detail["distributed"]["resumed_from_epoch"] == stopped_at
    assert [row["epoch"] for row in detail["history"]] == [1, 2, 3, 4]
    assert json.loads((checkpoints / "checkpoint.json").read_text())["epoch"] == 4
    assert json.loads(resumed.stdout)["after"]["accuracy"] > 0.5  # pruned to 50%, it starts near chance


def test_killed_one_process_run_resumes_and_a_resume_on_other_data_is_refused(tmp_path, small_fmnist_npz):
    from edgekit.errors import DataError

    recipe = _recipe(tmp_path, epochs=4)
    out = tmp_path / "out"
    checkpoints = _kill_after_the_first_checkpoint(recipe, small_fmnist_npz, out, 1)  # the run and its only rank
    info = json.loads((checkpoints / "checkpoint.json").read_text())
    stopped_at = info["epoch"]
    assert 1 <= stopped_at < 4 and info["world_size"] == 1 and not (out / "report.json").exists()
    assert info["parts"]["train_data"] and len(info["parts"]["train_data"]) == 64  # sha256 of the content

    # The same number of examples, one pixel of one image changed: a content fingerprint tells them apart.
    other = tmp_path / "other.npz"
    arrays = dict(np.load(small_fmnist_npz))
    arrays["x"] = arrays["x"].copy()
    arrays["x"].reshape(len(arrays["x"]), -1)[7, 100] += 0.5
    np.savez(other, **arrays)
    refused = _compress(recipe, other, out, "--nproc-per-node", "1", "--resume")
    assert refused.returncode == DataError.exit_code, refused.stderr[-3000:]
    assert "trained on other data: the training data differ" in refused.stderr, refused.stderr[-2000:]
    assert "resume with the --data the interrupted run had" in refused.stderr
    assert json.loads((checkpoints / "checkpoint.json").read_text())["epoch"] == stopped_at  # left as it was

    resumed = _compress(recipe, small_fmnist_npz, out, "--nproc-per-node", "1", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from the checkpoint of epoch {stopped_at}" in resumed.stderr
    detail = json.loads(resumed.stdout)["steps"][1]["detail"]
    assert detail["distributed"]["world_size"] == 1 and detail["distributed"]["resumed_from_epoch"] == stopped_at
    assert [row["epoch"] for row in detail["history"]] == [1, 2, 3, 4]
    assert json.loads((checkpoints / "checkpoint.json").read_text())["epoch"] == 4
    assert json.loads(resumed.stdout)["after"]["accuracy"] > 0.5  # pruned to 50%, it starts near chance


def test_a_checkpoint_names_the_part_that_differs_when_a_resume_is_refused(tmp_path):
    import torch

    from edgekit.compress.distill import TrainConfig
    from edgekit.compress.distributed import _job_fingerprint, _job_parts, _resume_point
    from edgekit.data.datasets import Dataset
    from edgekit.errors import DataError, UsageError

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    data = Dataset(name="t", split="train", x=torch.randn(20, 4), y=torch.randint(0, 3, (20,)), num_classes=3)
    config = TrainConfig(epochs=2)
    parts = _job_parts(model, None, data, None, config, 1)
    (tmp_path / "last.pt").write_bytes(b"x")
    (tmp_path / "checkpoint.json").write_text(json.dumps({"fingerprint": _job_fingerprint(parts), "parts": parts,
                                                          "epoch": 1}))
    assert _resume_point(tmp_path, _job_fingerprint(parts), parts, True) == 1
    shuffled = Dataset(name="t", split="train", x=data.x.flip(0), y=data.y.flip(0), num_classes=3)
    moved = _job_parts(model, None, shuffled, None, config, 1)  # the same examples in another order: other data
    with pytest.raises(DataError, match="other data: the training data differ"):
        _resume_point(tmp_path, _job_fingerprint(moved), moved, True)
    two = _job_parts(model, None, data, None, config, 2)
    with pytest.raises(UsageError, match=r"the process count \(it had 1 process\(es\), now 2\)"):
        _resume_point(tmp_path, _job_fingerprint(two), two, True)
    assert _resume_point(tmp_path, _job_fingerprint(two), two, False) == 0  # no resume: starts over
    assert not (tmp_path / "checkpoint.json").exists()


@pytest.mark.parametrize("value", ["0", "-3", "two", "65"])
def test_bad_nproc_per_node_is_a_usage_error_before_any_work(tmp_path, value):
    recipe = _recipe(tmp_path, epochs=1)
    result = subprocess.run(_cli("compress", "--recipe", str(recipe), "--model", "zoo:fmnist-resnet",
                                 "--out", str(tmp_path / "out"), "--nproc-per-node", value),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "--nproc-per-node" in result.stderr
    assert ("between 1 and 64" in result.stderr) != ("whole number" in result.stderr), result.stderr
    assert not (tmp_path / "out").exists()


def test_resume_without_an_output_directory_is_refused(tmp_path):
    from edgekit.compress.compressed import compress_model
    from edgekit.errors import UsageError

    with pytest.raises(UsageError, match="give the same --out"):  # the CLI requires --out; the API does not
        compress_model("zoo:fmnist-resnet", _recipe(tmp_path, epochs=1), "digits", resume=True)


def test_search_config_takes_nproc_per_node_and_refuses_a_bad_one():
    from edgekit.errors import UsageError
    from edgekit.optimize.config import SearchConfig

    assert SearchConfig(latency_budget_ms=1.0, nproc_per_node=2).nproc_per_node == 2
    assert SearchConfig.from_dict(SearchConfig(latency_budget_ms=1.0, nproc_per_node=3).to_dict()).nproc_per_node == 3
    with pytest.raises(UsageError, match="between 1 and 64"):
        SearchConfig(latency_budget_ms=1.0, nproc_per_node=0)


def test_optimize_fine_tuning_runs_in_two_processes_when_the_search_says_so():
    """The optimize loop's own fine-tuning call (SearchLoop.finetune) with nproc_per_node=2: real torchrun."""
    from types import SimpleNamespace

    from edgekit.compress.prune import PruneConfig, prune_model
    from edgekit.data import load_dataset, load_zoo_model
    from edgekit.evaluate import evaluate
    from edgekit.optimize.config import SearchConfig
    from edgekit.optimize.loop import SearchLoop

    teacher = load_zoo_model("fmnist-resnet")
    student = prune_model(teacher, PruneConfig(ratio=0.5)).model
    test = load_dataset("fashion-mnist", "test", limit=1000, seed=2)
    before = evaluate(student, test)
    loop = SimpleNamespace(train=load_dataset("fashion-mnist", "train", limit=1500, seed=2), teacher=teacher,
                           config=SearchConfig(latency_budget_ms=1.0, nproc_per_node=2))
    SearchLoop.finetune(loop, student, epochs=1, examples=None, seed=0)
    assert evaluate(student, test) > before + 0.2  # the weights trained by the ranks came back into the model
