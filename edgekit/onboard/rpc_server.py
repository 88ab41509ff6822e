#!/usr/bin/env python3
"""edgekit tuning server: TVM's RPC listen loop on the device's loopback, for remote tuning.

Runs ON the device (numpy + the TVM runtime, no cloudpickle, never edgekit), sent by the host as
``python3 -c SOURCE SITE_PACKAGES WORK_DIR`` with device_facts.py inlined ahead of it
(edgekit.compile.remote_tune starts it and reaches it through an SSH port forward).  Prints one
JSON line ({"ok", "port", "pid", "tvm", "facts"}), then serves until its stdin closes, and then
kills its session workers and exits.  Exit 31: the TVM runtime does not import.
"""

import json
import os
import signal
import socket
import sys
import threading

from device_facts import machine_facts

site = os.path.expanduser(sys.argv[1])
if os.path.isdir(site):
    sys.path.insert(0, site)
sys.modules.setdefault("torch", None)
os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")

try:
    import tvm
    from tvm.rpc import server as rpc_server
except Exception as exc:
    print(json.dumps({"ok": False, "error": "%s: %s" % (type(exc).__name__, exc), "facts": machine_facts()}),
          flush=True)
    sys.exit(31)
work = os.path.expanduser(sys.argv[2])
os.makedirs(work, exist_ok=True)
os.chdir(work)
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
sock.listen(4)

def children():
    mine = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    if f.read().rsplit(")", 1)[1].split()[1] == mine:
                        found.append(int(entry))
            except (OSError, IndexError):
                pass
    return found

def watch_stdin():
    # os.read, not sys.stdin: a thread blocked inside sys.stdin holds its lock, and the forked
    # session worker (multiprocessing closes stdin in the child) would deadlock on it.
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    # EOF: the host closed the channel or the link is gone; take the session workers along.
    for pid in children():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    os._exit(0)

threading.Thread(target=watch_stdin, daemon=True).start()
print(json.dumps({"ok": True, "port": sock.getsockname()[1], "pid": os.getpid(),
                  "tvm": tvm.__version__, "facts": machine_facts()}), flush=True)
rpc_server._listen_loop(sock, sock.getsockname()[1], "", None, None, None)
