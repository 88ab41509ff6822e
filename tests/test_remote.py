"""RemoteHost against real sshd devices: quoting, time limits, transfers, ssh_config aliases, ProxyJump."""

from __future__ import annotations

import os
import time

import pytest

from edgekit.deploy.remote import RemoteHost, parse_host, quote_command, resolve_host
from edgekit.errors import DeviceTimeoutError, RemoteCommandError, UsageError
from edgekit.testing.sshd import device_processes

NASTY = ["a b", "it's", '"dq"', "$(touch /tmp/edgekit-remote-pwned)", "`id`", "; rm -rf ~", "new\nline", "*", ""]


def test_parse_host_forms():
    assert parse_host("pi@board:2222") == ("pi", "board", 2222)
    assert parse_host("board") == (None, "board", None)
    assert parse_host("root@[::1]:22") == ("root", "::1", 22)
    with pytest.raises(UsageError):
        parse_host("pi@board:99999")
    with pytest.raises(UsageError):
        parse_host("pi@bo ard")


def test_every_argument_arrives_verbatim(device):
    with RemoteHost(device.host_spec, **device.connect_kwargs()) as remote:
        result = remote.run(["python3", "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", *NASTY])
    import json

    assert json.loads(result.stdout) == NASTY
    assert not os.path.exists("/tmp/edgekit-remote-pwned")


def test_quote_command_refuses_a_plain_string():
    with pytest.raises(TypeError):
        quote_command("rm -rf /")


def test_failed_command_carries_host_command_status_and_stderr(device):
    with RemoteHost(device.host_spec, **device.connect_kwargs()) as remote:
        with pytest.raises(RemoteCommandError) as caught:
            remote.run(["sh", "-c", "echo first >&2; echo boom >&2; exit 7"])
    err = caught.value
    assert err.host == device.host_spec and err.exit_status == 7 and "boom" in err.stderr_tail
    assert "sh -c" in err.command and err.exit_code == 32


def test_command_time_limit_kills_the_remote_process(device):
    marker = "edgekit-sleep-marker"
    with RemoteHost(device.host_spec, **device.connect_kwargs()) as remote:
        started = time.monotonic()
        with pytest.raises(DeviceTimeoutError):
            remote.run(["sh", "-c", f"sleep 30 # {device.remote_home} {marker}"], timeout_s=1)
        assert time.monotonic() - started < 10
    time.sleep(0.5)
    assert not [p for p in device_processes(device) if marker in p]


def test_put_uploads_and_reports_bytes(device, tmp_path):
    data = os.urandom(3 << 20)
    (tmp_path / "blob").write_bytes(data)
    with RemoteHost(device.host_spec, **device.connect_kwargs()) as remote:
        sent = remote.put(tmp_path / "blob", f"{device.remote_home}/blob")
        assert sent == len(data) and remote.stats.bytes_uploaded == len(data)
    assert (device.home / "blob").read_bytes() == data


def test_ssh_config_alias_gives_hostname_user_port_identity_known_hosts(device, tmp_path):
    config = tmp_path / "config"
    config.write_text(device.ssh_config_block("myboard"))
    spec = resolve_host("myboard", ssh_config=config)
    assert (spec.hostname, spec.port, spec.user) == ("127.0.0.1", device.port, device.user)
    assert spec.identity_files == (str(device.client_key),)
    with RemoteHost("myboard", ssh_config=config, allow_agent=False) as remote:
        assert remote.run(["echo", "hi"]).stdout == "hi\n"


def test_proxyjump_reaches_a_device_through_another(make_device, tmp_path):
    jump, target = make_device(runtime=False), make_device(runtime=False)
    config = tmp_path / "config"
    config.write_text(jump.ssh_config_block("jump") + target.ssh_config_block("target") + "  ProxyJump jump\n")
    known = tmp_path / "known_hosts"
    known.write_text(jump.known_hosts.read_text() + target.known_hosts.read_text())
    with RemoteHost("target", ssh_config=config, known_hosts=str(known), allow_agent=False) as remote:
        assert remote.spec.proxy_jump == "jump"
        assert remote.run(["sh", "-c", 'echo "$HOME"']).stdout.strip() == target.remote_home
    assert "Connection from" in target.log()


def test_several_devices_at_once_are_independent(make_device):
    devices = [make_device(runtime=False) for _ in range(3)]
    homes = []
    for d in devices:
        with RemoteHost(d.host_spec, **d.connect_kwargs()) as remote:
            homes.append(remote.run(["sh", "-c", 'echo "$HOME"']).stdout.strip())
    assert homes == [d.remote_home for d in devices] and len(set(homes)) == 3


def test_transient_refusal_is_retried_with_backoff_but_auth_failure_is_not(device, tmp_path):
    import threading

    from edgekit.errors import AuthenticationError
    from edgekit.testing.sshd import keygen

    device.stop()
    threading.Timer(0.3, device.start).start()  # the board comes back while we back off
    with RemoteHost(device.host_spec, **device.connect_kwargs(), retries=3, backoff_s=0.4) as remote:
        assert remote.run(["true"]).ok
    keygen(tmp_path / "wrong")
    before = device.log().count("Connection from")
    with pytest.raises(AuthenticationError):
        RemoteHost(device.host_spec, **{**device.connect_kwargs(), "identity_files": [str(tmp_path / "wrong")]},
                   retries=3, backoff_s=0.1).connect()
    assert device.log().count("Connection from") == before + 1  # tried once: retrying cannot fix a key
