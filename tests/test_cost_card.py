"""The cost card (issue 12, part 1): every kernel's device time mapped back to the PyTorch modules it was fused
from, with its share, MACs, bytes and GFLOP/s against the profile's peak; terminal, JSON, markdown and PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgekit.cli.main import main


def ssh_args(device) -> list[str]:
    return ["--host", device.host_spec, "-i", str(device.client_key), "--known-hosts", str(device.known_hosts),
            "--no-agent"]


def lopsided():
    """Small layers around one deliberately expensive 5x5 64->64 convolution (105 M of its ~107 M MACs)."""
    import torch

    class Lopsided(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                            torch.nn.ReLU())
            self.widen = torch.nn.Conv2d(8, 64, 1)
            self.expensive = torch.nn.Conv2d(64, 64, 5, padding=2)
            self.narrow = torch.nn.Conv2d(64, 8, 1)
            self.head = torch.nn.Linear(8, 10)

        def forward(self, x):
            x = torch.relu(self.narrow(torch.relu(self.expensive(self.widen(self.stem(x))))))
            return self.head(x.mean(dim=(2, 3)))

    torch.manual_seed(0)
    return Lopsided().eval()


@pytest.fixture(scope="module")
def lopsided_pt2(tmp_path_factory) -> Path:
    import torch

    path = tmp_path_factory.mktemp("lopsided") / "lopsided.pt2"
    torch.export.save(torch.export.export(lopsided(), (torch.zeros(1, 3, 32, 32),)), path)
    return path


def test_kernel_sources_follow_fusion_even_where_it_reorders_kernels():
    import torch

    from edgekit.compile.build import resolve_tvm_target
    from edgekit.compile.frontend import import_model
    from edgekit.measure.kernel_sources import trace_kernel_sources
    from edgekit.targets import load_target
    from edgekit.testing.models import ResNetTiny

    torch.manual_seed(0)
    program = torch.export.export(ResNetTiny(in_ch=1, width=8).eval(), (torch.zeros(1, 1, 28, 28),))
    sources = trace_kernel_sources(program, import_model(program).mod, resolve_tvm_target(load_target("host")))
    by_anchor = {s.modules[0]: s for s in sources.values() if s.modules}
    # fusion emits the shortcut's kernel before layer2.conv2's (whose group ends at the residual add)
    assert {"stem.0", "layer1.conv1", "layer1.conv2", "layer2.conv1", "layer2.conv2", "layer2.shortcut.0",
            "fc"} <= set(by_anchor)
    assert by_anchor["stem.0"].modules == ["stem.0", "stem.1", "stem.2"]  # BatchNorm and ReLU fused in
    assert by_anchor["layer2.shortcut.0"].ops == ["conv2d", "add"]
    assert all(s.modules or s.compilation_artifact for s in sources.values())
    assert any(s.compilation_artifact and "transpose" in s.ops for s in sources.values())


def test_the_cost_card_over_ssh_ranks_the_expensive_layer_first(device, lopsided_pt2, tmp_path, capsys):
    report_dir = tmp_path / "card"
    argv = ["profile", "--model", str(lopsided_pt2), "--target", "host", *ssh_args(device), "--repeats", "6",
            "--kernel-repeats", "3", "-o", str(tmp_path / "artifacts"), "--report-dir", str(report_dir)]
    assert main(argv + ["--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    kernels = card["kernels"]
    top = kernels[0]
    assert top["modules"][0] == "expensive" and top["module_types"][0] == "Conv2d"
    assert top["macs"] == 64 * 64 * 25 * 32 * 32 and top["gflops"] > 0 and top["share"] > 0.5
    assert top["bytes"] >= 4 * (64 * 64 * 25 + 2 * 64 * 32 * 32)  # weights in, activations in and out
    assert all(k["modules"] or k["compilation_artifact"] for k in kernels), kernels
    assert sum(k["share"] for k in kernels) == pytest.approx(1.0)
    assert [k["total_ms"] for k in kernels] == sorted((k["total_ms"] for k in kernels), reverse=True)
    assert card["peak_gflops"] is None and top["peak_ratio"] is None  # the host profile names no peak
    assert card["suggestions"][0]["module"] == "expensive" and card["emulated"] is False
    assert card["device"]["host"] == device.host_spec or card["device"]["machine"] == "x86_64"
    markdown = (report_dir / "cost_card.md").read_text()
    assert "| expensive, (model.forward) |" in markdown and "`edgekit optimize`" in markdown
    assert json.loads((report_dir / "cost_card.json").read_text())["kernels"][0]["name"] == top["name"]
    assert (report_dir / "cost_card.png").read_bytes()[:4] == b"\x89PNG"

    assert main(argv) == 0  # the terminal table: the same ranking
    out = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(out) if "module(s)" in line)
    assert "expensive" in out[header + 1] and top["name"] in out[header + 1]
    assert any(line.startswith("optimize   expensive") for line in out)


def test_the_card_measures_against_the_profiles_peak(tmp_path, capsys):
    from edgekit.artifacts import LatencyReport
    from edgekit.measure.cost_card import build_card
    from edgekit.measure.kernel_sources import KernelSource
    from edgekit.targets import load_target

    assert load_target("rpi4").peak_gflops_per_core == 12.0 and load_target("host").peak_gflops_per_core is None
    report = LatencyReport(artifact_id="a", target="rpi4", device={}, threads=4, warmup=1, samples_ms=[1.0],
                           stats={"median_ms": 1.0}, output_check={"passed": True},
                           kernels=[{"name": "fused_conv2d_add", "calls": 1, "median_ms": 0.5, "total_ms": 0.5,
                                     "args": [{"shape": [1, 8, 8, 16], "dtype": "float32"}]}])
    sources = {"fused_conv2d_add": KernelSource(name="fused_conv2d_add", ops=["conv2d", "add"], modules=["c"],
                                                module_types=["Conv2d"])}
    card = build_card(report, sources, {"c": 6_000_000}, peak_gflops=48.0)
    row = card.rows[0]
    assert row["gflops"] == pytest.approx(24.0) and row["peak_ratio"] == pytest.approx(0.5)
    assert row["bytes"] == 4 * 8 * 8 * 16
    (tmp_path / "bad.toml").write_text('description = "x"\nkind = "cpu"\narch = "native"\ntriple = "native"\n'
                                       'tvm_target = { kind = "llvm" }\npeak_gflops_per_core = -1\n')
    assert main(["targets", "show", "bad", "--targets-dir", str(tmp_path)]) == 6
    assert "peak_gflops_per_core" in capsys.readouterr().err


def test_kernels_on_deploy_and_run_name_the_modules(device, lopsided_pt2, tmp_path, capsys):
    common = ["--model", str(lopsided_pt2), "--target", "host", "-o", str(tmp_path / "artifacts"), "--kernels",
              "--repeats", "6", "--warmup", "2"]
    assert main(["deploy", *common, *ssh_args(device), "--json"]) == 0
    kernels = json.loads(capsys.readouterr().out)["devices"][0]["report"]["kernels"]
    top = max(kernels, key=lambda k: k["total_ms"])
    assert top["modules"][0] == "expensive" and all(k["modules"] or k["compilation_artifact"] for k in kernels)
    assert main(["run", *common]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("kernel ")]
    assert "expensive" in lines[0] and any("(compilation: layout)" in line for line in lines)


def test_optimize_latency_table_links_kernels_by_module_and_names_layers_by_path(tmp_path):
    """The optimize loop's latency table finds each probe conv's kernel through the cost card's mapping (not by
    shapes), and reports a model's layers by module path, the expensive one first."""
    from edgekit.compile import compile_model
    from edgekit.optimize.devices import LocalDevice
    from edgekit.optimize.latency_table import LatencyTable, conv_layers

    device, model = LocalDevice(), lopsided()
    layers = conv_layers(model, (1, 3, 16, 16))
    table = LatencyTable.open(identity="local", target="host", threads=1, cache_dir=tmp_path)

    def measure_fn(artifact, kernels=False):
        report = device.measure(artifact, kernels=kernels, repeats=5, kernel_repeats=5)
        table.observe(report.device)
        return report

    table.fill([spec for _, spec in layers], measure_fn=measure_fn,
               compile_fn=lambda m, shapes: compile_model(m, "host", input_shapes=shapes, out_dir=tmp_path / "a"))
    entries = [table.get(spec.signature) for _, spec in layers]
    assert all(e["matched_by"] == "module" and "conv" in e["kernel"] for e in entries)
    assert len({e["kernel"] for e in entries}) == len(entries)  # one kernel per distinct conv
    rows = table.layer_rows(layers)
    assert [r["module"] for r in rows][0] == "expensive"
    assert {r["module"] for r in rows} == {"stem.0", "widen", "expensive", "narrow"}
    assert all(r["latency_ms"] > 0 for r in rows)
