#!/usr/bin/env python3
"""edgekit pool server: TVM's RPC server on a board, registered with a tracker that only SSH reaches.

Runs ON the board (numpy + the TVM runtime, never edgekit), sent by `edgekit pool join` as
``python3 -c SOURCE SITE_PACKAGES WORK_DIR TRACKER_PORT KEY UNIT`` with device_facts.py inlined ahead of it.
The board has nothing open but SSH: ``TRACKER_PORT`` is the board's end of a reverse forward (ssh -R) to the
tracker, and the port this server tells the tracker is the join host's end of a forward (ssh -L) to it, which
the host sends on stdin once it knows it.  The conversation on stdin/stdout:

    -> {"ok": true, "port": <listen port on the board's loopback>, "pid", "tvm", "facts"}
    <- {"report_port": <port clients reach this server at>}
    then TVM's own listen loop (tvm.rpc.server._listen_loop) serves sessions until stdin closes; then every
    process below this one (session workers, runners they started) is killed and the server exits.

Beside TVM's own functions, sessions can call two registered here (they run in the session worker, a fork of
this process):
- ``edgekit.pool.unit()``: which board this is (its name and facts), so a client records who measured what;
- ``edgekit.pool.run_runner(request_json)``: runs edgekit's device runner on files the client uploaded into the
  session's directory, with the arguments and environment a direct SSH deploy gives it, and returns its exit
  status, stdout and stderr.  The runner runs in a child forked from the session worker, which has the TVM
  runtime imported already (run_forked), so a round does not pay for importing it again.
Exit 31: the TVM runtime does not import.
"""

import json
import os
import signal
import socket
import sys
import threading
import time

from device_facts import machine_facts

site = os.path.expanduser(sys.argv[1])
if os.path.isdir(site):
    sys.path.insert(0, site)
sys.modules.setdefault("torch", None)
os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")

try:
    import tvm
    import tvm_ffi
    from tvm.rpc import server as rpc_server
except Exception as exc:
    print(json.dumps({"ok": False, "error": "%s: %s" % (type(exc).__name__, exc), "facts": machine_facts()}),
          flush=True)
    sys.exit(31)
work = os.path.expanduser(sys.argv[2])
tracker_port, key, unit = int(sys.argv[3]), sys.argv[4], sys.argv[5]
os.makedirs(work, exist_ok=True)
os.chdir(work)
facts = machine_facts()


def descendants(root):
    """Every process below ``root`` (session workers and the runners they started), from /proc."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        kids = [pid for pid, ppid in parents.items() if ppid == parent]
        found += kids
        frontier += kids
    return found


@tvm_ffi.register_global_func("edgekit.pool.unit")
def pool_unit():
    return json.dumps({"unit": unit, "key": key, "facts": facts})


@tvm_ffi.register_global_func("edgekit.pool.run_runner")
def run_runner(request_json):
    """Place the uploaded files, run the runner on them, return what it printed (the host reads it)."""
    request = json.loads(request_json)
    workpath = tvm.get_global_func("tvm.rpc.server.workpath")
    for dest, uploaded in request["layout"].items():
        path = workpath(dest)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.replace(workpath(uploaded), path)
    argv = [workpath(request["runner"]), workpath(request["artifact"]), *request["argv"], "--site", site]
    env = dict(os.environ, **request.get("env", {}))
    status, out, err = run_forked(argv, env, request["timeout_s"])
    if status < 0:
        status = 128 - status  # killed by signal N: 128 + N, as a shell reports it
    return json.dumps({"exit_status": status, "stdout": out, "stderr": err})


RUNNER_PROCESS_NAME = "edgekit-runner"


def run_forked(argv, env, timeout_s):
    """The runner script ``argv[0]`` in a child forked from this session worker: (exit status, stdout, stderr).

    The worker has numpy and the TVM runtime imported (this server's, TVM_USE_RUNTIME_LIB as the runner
    asks), and has run no kernel, so its thread pool does not exist yet and the child's TVM_NUM_THREADS
    still decides it.  A fresh python3 for the runner would import them again: 1.4 s of CPU before the first
    inference on a Zen 5 core, several seconds on a Pi, paid by every measurement round.  The child gets the
    runner's environment, argv and a stdin of /dev/null, and never returns into TVM's serving loop.
    """
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the runner script with its arguments, then exit with its status
        code = 1
        try:
            try:  # what `ps` shows for it on the board (the command line stays the server's)
                with open("/proc/self/comm", "w") as comm:
                    comm.write(RUNNER_PROCESS_NAME)
            except OSError:
                pass
            os.close(out_r)
            os.close(err_r)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            sys.stdout = open(1, "w", closefd=False)
            sys.stderr = open(2, "w", closefd=False)
            os.environ.clear()
            os.environ.update(env)
            sys.argv = list(argv)
            sys.path.insert(0, os.path.dirname(argv[0]))
            import runpy

            try:
                runpy.run_path(argv[0], run_name="__main__")
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001  (the runner crashed: say how, as python3 would)
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(out_w)
    os.close(err_w)
    chunks = {out_r: [], err_r: []}
    readers = [threading.Thread(target=_drain, args=(fd, chunks[fd]), daemon=True) for fd in chunks]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + timeout_s
    status = None
    while status is None:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(raw)
        elif time.monotonic() > deadline:
            for child in [pid] + descendants(pid):
                try:
                    os.kill(child, signal.SIGKILL)
                except OSError:
                    pass
            os.waitpid(pid, 0)
            status = 124
        else:
            time.sleep(0.01)
    for reader in readers:
        reader.join(timeout=5)
    return status, b"".join(chunks[out_r]).decode(errors="replace"), b"".join(chunks[err_r]).decode(errors="replace")


def _drain(fd, into):
    try:
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            into.append(chunk)
    finally:
        os.close(fd)


def read_line_from_stdin():
    # os.read, not sys.stdin: the forked session workers must not inherit a lock held by a reader thread.
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(0, 1)
        if not chunk:
            sys.exit(0)
        data += chunk
    return json.loads(data)


def watch_stdin():
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    # EOF: `pool join` ended or the link is gone; take every session worker and runner along.
    for pid in descendants(os.getpid()):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    os._exit(0)


sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
sock.listen(4)
print(json.dumps({"ok": True, "port": sock.getsockname()[1], "pid": os.getpid(), "tvm": tvm.__version__,
                  "facts": facts}), flush=True)
report_port = int(read_line_from_stdin()["report_port"])
threading.Thread(target=watch_stdin, daemon=True).start()
rpc_server._listen_loop(sock, report_port, key, ("127.0.0.1", tracker_port), None, "127.0.0.1")
