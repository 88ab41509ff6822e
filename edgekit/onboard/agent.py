#!/usr/bin/env python3
"""edgekit device agent: runs ON the device (python3 standard library only, never imports edgekit).

The host sends this file's source with ``python3 -c``, with device_facts.py inlined ahead of it
(``edgekit.onboard.inline_source``); nothing is installed.  Two modes:

    agent probe ROOT            print the device facts as one JSON line, exit
    agent session ROOT WAIT_S [IDLE_S]
                                print the facts, take ROOT/.lock (waiting up to WAIT_S), print the
                                deploy state, then answer one JSON request per stdin line until
                                stdin closes, or until nothing (not even a "ping") arrives for IDLE_S
                                seconds: a link that died silently is only noticed by the device's
                                sshd hours later, and the board must not stay locked that long.  The
                                lock dies with the process.

Layout under ROOT (default ~/.edgekit):

    blobs/<sha256>          every file ever uploaded, content-addressed (hard-linked into versions)
    versions/<artifact_id>/ manifest.json, model.so, reference.npz, runner.py, device_facts.py (hard
                            links to blobs)
    current -> versions/<id>  switched atomically (rename of a symlink) after the run checked out
    previous -> versions/<id> what --rollback goes back to
    tmp/                    uploads in flight; emptied whenever the lock is taken
    runtime/site-packages/  the TVM runtime installed by `edgekit device setup`, when python lacks it

Exit codes: 0 done, 3 device busy (lock held), 4 bad usage.
"""

import errno
import fcntl
import json
import os
import platform
import shutil
import sys
import time

from device_facts import file_sha256, machine_facts, read_text

EXIT_BUSY = 3


def facts(root):
    site = os.path.join(root, "runtime", "site-packages")
    if os.path.isdir(site):
        sys.path.insert(0, site)
    machine = machine_facts()
    return {
        **machine,
        "python_executable": sys.executable,
        "glibc": glibc_version(),
        "hostname": platform.node(),
        "home": os.path.expanduser("~"),
        "root": root,
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "mem_total_bytes": mem_total(),
        "free_bytes": free_bytes(root),
        "packages": {name: package_version(name) for name in ("apache-tvm", "apache-tvm-ffi", "numpy")},
        "tvm_runtime_lib": tvm_runtime_lib(),
        "runtime_site": site if os.path.isdir(site) else None,
        "tools": {tool: shutil.which(tool) is not None for tool in ("timeout", "sha256sum", "pip3")},
        "pip": pip_available(),
    }


def glibc_version():
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"
        return text.split()[-1] if text else None
    except (ValueError, OSError, AttributeError):
        return None


def mem_total():
    for line in (read_text("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def free_bytes(path):
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        st = os.statvfs(path or "/")
        return st.f_bavail * st.f_frsize
    except OSError:
        return None


def package_version(name):
    try:
        from importlib import metadata

        return metadata.version(name)
    except Exception:
        return None


def tvm_runtime_lib():
    """Where libtvm_runtime.so is, found without importing tvm (that takes seconds on a board)."""
    try:
        from importlib.util import find_spec

        spec = find_spec("tvm")
    except Exception:
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        lib = os.path.join(location, "lib", "libtvm_runtime.so")
        if os.path.isfile(lib):
            return lib
    return None


def pip_available():
    try:
        from importlib.util import find_spec

        return find_spec("pip") is not None
    except Exception:
        return False




def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# -- the deploy directory --------------------------------------------------------------------------------------

class Store:
    def __init__(self, root):
        self.root = root
        self.blobs = os.path.join(root, "blobs")
        self.versions = os.path.join(root, "versions")
        self.tmp = os.path.join(root, "tmp")

    def ensure(self):
        for d in (self.root, self.blobs, self.versions, self.tmp):
            os.makedirs(d, exist_ok=True)

    def link_target(self, name):
        try:
            return os.path.basename(os.readlink(os.path.join(self.root, name)))
        except OSError:
            return None

    def state(self):
        versions = sorted(d for d in os.listdir(self.versions) if not d.startswith("."))
        return {"current": self.link_target("current"), "previous": self.link_target("previous"),
                "versions": versions, "blobs": sorted(os.listdir(self.blobs)), "free_bytes": free_bytes(self.root),
                "tmp": self.tmp}

    def clean_tmp(self):
        """Whatever is in tmp/ belongs to a session that died: we hold the lock now."""
        for name in os.listdir(self.tmp):
            remove(os.path.join(self.tmp, name))
        for name in os.listdir(self.versions):
            if name.startswith("."):
                remove(os.path.join(self.versions, name))
        for name in os.listdir(self.root):
            if name.endswith(".new"):
                remove(os.path.join(self.root, name))

    def commit(self, version, files, parts):
        """Verify uploaded parts, file them as blobs, assemble versions/<version> (all or nothing)."""
        bad = {}
        for digest, part in parts.items():
            path = os.path.join(self.tmp, part)
            actual = file_sha256(path)
            if actual != digest:
                bad[part] = actual
        if bad:
            for part in parts.values():
                remove(os.path.join(self.tmp, part))
            return {"ok": False, "error": "sha256", "bad": bad}
        for digest, part in parts.items():
            os.rename(os.path.join(self.tmp, part), os.path.join(self.blobs, digest))
        final = os.path.join(self.versions, version)
        if os.path.isdir(final):
            return {"ok": True, "created": False}
        missing = [d for d in files.values() if not os.path.isfile(os.path.join(self.blobs, d))]
        if missing:
            return {"ok": False, "error": "missing_blob", "missing": missing}
        staging = os.path.join(self.versions, ".%s.%d" % (version, os.getpid()))
        os.mkdir(staging)
        try:
            for name, digest in files.items():
                os.link(os.path.join(self.blobs, digest), os.path.join(staging, name))
            os.rename(staging, final)
        except BaseException:
            remove(staging)
            raise
        return {"ok": True, "created": True}

    def switch(self, link, version):
        """Point ROOT/link at versions/version: a rename over the old link, so it is never missing."""
        new = os.path.join(self.root, link + ".new")
        remove(new)
        os.symlink(os.path.join("versions", version), new)
        os.rename(new, os.path.join(self.root, link))

    def activate(self, version, keep):
        current = self.link_target("current")
        if not os.path.isdir(os.path.join(self.versions, version)):
            return {"ok": False, "error": "no_version", "version": version}
        if current != version:
            if current and os.path.isdir(os.path.join(self.versions, current)):
                self.switch("previous", current)
            self.switch("current", version)
        os.utime(os.path.join(self.versions, version))  # deploy order, for keep-N
        fsync_dir(self.root)
        pruned = self.prune(keep)
        return {"ok": True, "previous": current, "pruned": pruned}

    def prune(self, keep):
        protected = {self.link_target("current"), self.link_target("previous")}
        versions = [d for d in os.listdir(self.versions) if not d.startswith(".")]
        versions.sort(key=lambda d: os.stat(os.path.join(self.versions, d)).st_mtime, reverse=True)
        pruned = []
        for index, name in enumerate(versions):
            if index >= keep and name not in protected:
                remove(os.path.join(self.versions, name))
                pruned.append(name)
        self.gc()
        return pruned

    def gc(self):
        """A blob linked from no version has one link left: delete it."""
        for name in os.listdir(self.blobs):
            path = os.path.join(self.blobs, name)
            try:
                if os.stat(path).st_nlink <= 1:
                    os.unlink(path)
            except OSError:
                pass

    def discard(self, version):
        if version in (self.link_target("current"), self.link_target("previous")):
            return {"ok": True, "discarded": False}
        remove(os.path.join(self.versions, version))
        self.gc()
        return {"ok": True, "discarded": True}

    def rollback(self):
        current, previous = self.link_target("current"), self.link_target("previous")
        if not previous or not os.path.isdir(os.path.join(self.versions, previous)):
            return {"ok": False, "error": "no_previous", "current": current}
        self.switch("current", previous)
        if current and os.path.isdir(os.path.join(self.versions, current)):
            self.switch("previous", current)
        fsync_dir(self.root)
        return {"ok": True, "current": previous, "previous": current}

    def install_runtime(self, tarball, sha256):
        """Unpack a runtime bundle into runtime/site-packages: verified first, swapped in by renames."""
        import tarfile

        path = os.path.join(self.tmp, tarball)
        actual = file_sha256(path)
        if actual != sha256:
            remove(path)
            return {"ok": False, "error": "sha256", "actual": actual}
        runtime = os.path.join(self.root, "runtime")
        os.makedirs(runtime, exist_ok=True)
        staging = os.path.join(runtime, ".site-packages.%d" % os.getpid())
        remove(staging)
        try:
            with tarfile.open(path) as tar:
                for member in tar.getmembers():
                    name = member.name
                    if name.startswith("/") or ".." in name.split("/") or not (member.isfile() or member.isdir()):
                        return {"ok": False, "error": "bad_member", "member": name}
                tar.extractall(staging)
            final = os.path.join(runtime, "site-packages")
            old = os.path.join(runtime, ".old.%d" % os.getpid())
            if os.path.isdir(final):
                os.rename(final, old)
            os.rename(staging, final)
            remove(old)
        finally:
            remove(staging)
            remove(path)
        return {"ok": True, "site": os.path.join(runtime, "site-packages")}




def remove(path):
    if os.path.islink(path) or os.path.isfile(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    elif os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)


def fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def take_lock(root, wait_s):
    path = os.path.join(root, ".lock")
    handle = open(path, "a+")
    deadline = time.time() + wait_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.time() >= deadline:
                handle.seek(0)
                return None, handle.read().strip()
            time.sleep(0.2)
    handle.seek(0)
    handle.truncate()
    handle.write("pid %d since %s\n" % (os.getpid(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
    handle.flush()
    return handle, None


def stdin_lines(idle_s):
    """Lines from stdin; stops at EOF or after idle_s seconds of silence."""
    import select

    pending = b""
    while True:
        ready, _, _ = select.select([0], [], [], idle_s)
        if not ready:
            sys.stderr.write("edgekit agent: no word from the host for %gs, giving up the lock\n" % idle_s)
            return
        chunk = os.read(0, 65536)
        if not chunk:
            return
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            yield line.decode("utf-8", "replace")


def session(root, wait_s, idle_s=120.0):
    store = Store(root)
    try:
        store.ensure()
    except OSError as exc:
        emit({"ok": False, "error": "disk_full" if exc.errno == errno.ENOSPC else "os", "message": str(exc)})
        return 1
    lock, holder = take_lock(root, wait_s)
    if lock is None:
        emit({"ok": False, "error": "busy", "holder": holder})
        return EXIT_BUSY
    store.clean_tmp()
    store.gc()
    emit({"ok": True, "locked": True, "state": store.state()})
    for line in stdin_lines(idle_s):
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            op = request.pop("op")
            if op == "ping":
                continue  # the host is alive; no answer, so pings never mix with replies
            if op == "state":
                reply = {"ok": True, "state": store.state()}
            elif op == "commit":
                reply = store.commit(**request)
            elif op == "activate":
                reply = store.activate(**request)
            elif op == "discard":
                reply = store.discard(**request)
            elif op == "rollback":
                reply = store.rollback()
            elif op == "install_runtime":
                reply = store.install_runtime(**request)
            elif op == "clean":
                store.clean_tmp()
                store.gc()
                reply = {"ok": True}
            else:
                reply = {"ok": False, "error": "unknown_op", "op": op}
        except OSError as exc:
            reply = {"ok": False, "error": "disk_full" if exc.errno == errno.ENOSPC else "os", "message": str(exc)}
            try:
                store.clean_tmp()
                store.gc()
            except OSError:
                pass
        except Exception as exc:  # report, keep serving: the host decides what to do
            reply = {"ok": False, "error": "exception", "message": "%s: %s" % (type(exc).__name__, exc)}
        emit(reply)
    return 0


def main(argv):
    if len(argv) >= 2:
        argv = [argv[0], os.path.abspath(os.path.expanduser(argv[1]))] + argv[2:]
    if len(argv) >= 2 and argv[0] == "probe":
        emit(facts(argv[1]))
        return 0
    if len(argv) >= 3 and argv[0] == "session":
        emit(facts(argv[1]))
        return session(argv[1], float(argv[2]), *(float(a) for a in argv[3:4]))
    sys.stderr.write("usage: agent probe ROOT | agent session ROOT WAIT_S [IDLE_S]\n")
    return 4


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
