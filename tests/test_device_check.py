"""`edgekit device check` / `edgekit device setup` against real local devices."""

from __future__ import annotations

import json

from edgekit.cli.main import main


def args(device):
    return ["--host", device.host_spec, "-i", str(device.client_key), "--known-hosts", str(device.known_hosts),
            "--no-agent"]


def test_check_names_what_is_missing_and_how_to_fix_it(make_device, capsys):
    device = make_device(runtime=False)
    code = main(["device", "check", "--target", "host", *args(device), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 31 and report["ok"] is False
    findings = {f["name"]: f for f in report["findings"]}
    assert findings["arch"]["ok"] and findings["python"]["ok"] and findings["glibc"]["ok"]
    assert not findings["tvm"]["ok"] and "edgekit device setup --target host" in findings["tvm"]["fix"]
    assert not findings["numpy"]["ok"]
    assert report["facts"]["machine"] == "x86_64" and report["facts"]["free_bytes"] > 0
    assert {"governor", "load", "disk"} <= set(findings)


def test_check_wrong_profile_reports_the_arch_mismatch(device, capsys):
    code = main(["device", "check", "--target", "rpi4", *args(device)])
    out = capsys.readouterr().out
    assert code == 31 and "!! arch" in out and "x86_64" in out and "aarch64" in out


def test_setup_installs_the_runtime_without_a_registry_then_deploy_works(make_device, host_artifact, edgekit_cache,
                                                                         capsys):
    device = make_device(runtime=False)
    code = main(["device", "setup", "--target", "host", *args(device), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"], report
    site = device.home / ".edgekit" / "runtime" / "site-packages"
    assert (site / "tvm" / "lib" / "libtvm_runtime.so").is_file()
    assert not (site / "tvm" / "lib" / "libtvm_compiler.so").exists()  # the device gets the runtime only
    assert main(["device", "check", "--target", "host", *args(device), "--import"]) == 0
    assert "imports on the device" in capsys.readouterr().out
    code = main(["deploy", "--artifact", str(host_artifact.path), *args(device), "--repeats", "3", "--warmup", "1",
                 "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["devices"][0]["report"]["output_check"]["passed"]


def test_device_without_python_is_a_runtime_error(make_device, host_artifact):
    from edgekit.deploy.deploy import deploy_model

    device = make_device(runtime=False, env={"PATH": "/nonexistent"})  # no python3 (nor anything) on PATH
    r = deploy_model(host_artifact, hosts=[device.host_spec], connect=device.connect_kwargs()).results[0]
    assert r.exit_code == 31 and "python3 is missing" in r.error


def test_runtime_bundle_from_wheels_drops_the_compiler_library(tmp_path):
    import tarfile
    import zipfile

    from edgekit.deploy.checks import runtime_bundle

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "apache_tvm-0.27.0.post1-cp311-cp311-manylinux_2_28_aarch64.whl", "w") as z:
        z.writestr("tvm/__init__.py", "")
        z.writestr("tvm/lib/libtvm_runtime.so", b"\x7fELF runtime")
        z.writestr("tvm/lib/libtvm_compiler.so", b"\x7fELF compiler" * 1000)
        z.writestr("apache_tvm-0.27.0.post1.dist-info/METADATA", "Name: apache-tvm\nVersion: 0.27.0.post1\n")
    bundle = runtime_bundle("aarch64", "3.11", wheels_dir=wheels, cache=tmp_path / "cache")
    with tarfile.open(bundle) as tar:
        names = set(tar.getnames())
    assert "tvm/lib/libtvm_runtime.so" in names and "tvm/__init__.py" in names
    assert "tvm/lib/libtvm_compiler.so" not in names
    assert "apache_tvm-0.27.0.post1.dist-info/METADATA" in names
