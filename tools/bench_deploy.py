#!/usr/bin/env python3
"""Deploy benchmark on a local SSH device (run as root): how long a fresh ~10 MB artifact takes to deploy,
how long an unchanged one takes (it uploads nothing), and how much repeated latency measurements of the
same artifact spread (CV).

    python tools/bench_deploy.py [--reps 3] [--measure-runs 5] [--out tools/results]

Writes bench_deploy.json (every number) and bench_deploy.md (a table) into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_artifact(out_dir: Path):
    """An MLP with ~10 MB of float32 weights, compiled for this machine."""
    import torch

    from edgekit.compile import compile_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1600, 1600), torch.nn.ReLU(), torch.nn.Linear(1600, 10)).eval()
    return compile_model(model, "host", input_shapes=[(1, 1600)], out_dir=out_dir)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="fresh and unchanged deploys, each")
    parser.add_argument("--measure-runs", type=int, default=5, help="repeated measurements of the same artifact")
    parser.add_argument("--repeats", type=int, default=50, help="timed runs per measurement")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    os.environ.setdefault("EDGEKIT_CACHE", "/var/cache/edgekit-test")

    from edgekit.deploy.deploy import deploy_model
    from edgekit.targets import MeasureProtocol
    from edgekit.testing.sshd import create_device, local_runtime_site

    work = Path(tempfile.mkdtemp(prefix="edgekit-bench-"))
    artifact = build_artifact(work)
    device = create_device(env={"PYTHONPATH": str(local_runtime_site())})
    connect = device.connect_kwargs()
    check_only = MeasureProtocol(check_only=True, time_limit_s=120)
    rows = {"fresh": [], "unchanged": []}
    try:
        for rep in range(args.reps):
            root = f"~/.edgekit-bench-{rep}"  # an empty deploy root: nothing on the device yet
            for kind in ("fresh", "unchanged"):
                started = time.perf_counter()
                r = deploy_model(artifact, hosts=[device.host_spec], connect=connect, root=root,
                                 measure=check_only).results[0]
                wall = time.perf_counter() - started
                if not r.ok:
                    raise SystemExit(f"deploy failed: {r.error}")
                rows[kind].append({"wall_s": wall, "bytes_uploaded": r.bytes_uploaded,
                                   "files_uploaded": r.files_uploaded, "timings_s": r.timings_s})
        measurements = []
        for _ in range(args.measure_runs):
            r = deploy_model(artifact, hosts=[device.host_spec], connect=connect,
                             measure=MeasureProtocol(warmup=10, repeats=args.repeats, threads=1)).results[0]
            measurements.append({"median_ms": r.report.stats["median_ms"], "cv": r.report.stats["cv"],
                                 "p90_ms": r.report.stats["p90_ms"], "samples": len(r.report.samples_ms)})
    finally:
        device.remove()
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    medians = [m["median_ms"] for m in measurements]
    result = {
        "artifact": {"id": artifact.artifact_id, "size_bytes": artifact.size_bytes},
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "note": "device is a local sshd on 127.0.0.1 (loopback), same 2-core machine"},
        "fresh": summarize(rows["fresh"]),
        "unchanged": summarize(rows["unchanged"]),
        "latency": {
            "runs": measurements,
            "median_of_medians_ms": statistics.median(medians),
            "cv_across_runs": statistics.stdev(medians) / statistics.fmean(medians) if len(medians) > 1 else 0.0,
            "cv_within_run_median": statistics.median(m["cv"] for m in measurements),
        },
        "raw": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_deploy.json").write_text(json.dumps(result, indent=2))
    (out / "bench_deploy.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def summarize(rows):
    walls = [r["wall_s"] for r in rows]
    return {"median_wall_s": statistics.median(walls), "min_wall_s": min(walls), "max_wall_s": max(walls),
            "bytes_uploaded": rows[0]["bytes_uploaded"], "reps": len(rows),
            "median_upload_s": statistics.median(r["timings_s"].get("upload", 0.0) for r in rows)}


def markdown(r) -> str:
    f, u, lat = r["fresh"], r["unchanged"], r["latency"]
    lines = [
        "# Deploy benchmark (tools/bench_deploy.py)",
        "",
        f"Artifact {r['artifact']['id']}: {r['artifact']['size_bytes'] / 1e6:.1f} MB (MLP 1600-1600-10, host).",
        f"Device: {r['machine']['note']}; {r['machine']['cpus']} CPUs.",
        "",
        "| deploy | median wall (s) | min-max (s) | upload phase (s) | bytes uploaded |",
        "|---|---|---|---|---|",
        f"| fresh | {f['median_wall_s']:.2f} | {f['min_wall_s']:.2f}-{f['max_wall_s']:.2f} | "
        f"{f['median_upload_s']:.3f} | {f['bytes_uploaded']} |",
        f"| unchanged | {u['median_wall_s']:.2f} | {u['min_wall_s']:.2f}-{u['max_wall_s']:.2f} | "
        f"{u['median_upload_s']:.3f} | {u['bytes_uploaded']} |",
        "",
        "Both include connect, device checks, on-device sha256 verification and an output check run of the "
        "model (python + TVM runtime import on the device, about 1 s here).",
        "",
        f"Latency, {len(lat['runs'])} separate measurements of the same artifact ({lat['runs'][0]['samples']} "
        f"samples each, 1 thread):",
        "",
        "| run | median (ms) | p90 (ms) | CV within run |",
        "|---|---|---|---|",
        *[f"| {i + 1} | {m['median_ms']:.4f} | {m['p90_ms']:.4f} | {m['cv']:.1%} |" for i, m in enumerate(lat["runs"])],
        "",
        f"CV of the medians across runs: {lat['cv_across_runs']:.1%}; median within-run CV: "
        f"{lat['cv_within_run_median']:.1%}.  (Shared 2-core machine with other work running: expect noise.)",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
