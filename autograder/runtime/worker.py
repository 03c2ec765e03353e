"""The only code that runs next to student code: a zygote and the probes it forks. It knows no
homework part: each part's probes (tests_hidden/<part>/probes.py) are staged beside it.

This file is copied into the sandbox directory, with wire.py and probekit.py, and run there as
``python -I worker.py zygote --fd N [--user UID:GID] [--hide PATH ...]``. It is standalone (stdlib,
numpy, torch) because the grader's own tree is hidden from it.

Start-up, still as root: a private mount namespace (each --hide path is covered by an empty
tmpfs, or /dev/null for a file), a private network namespace, then setgroups/setgid/setuid to
the unprivileged user. Only then are numpy and torch imported, and no torch op runs before a fork
(OpenMP thread pools do not survive fork).

Per probe the grader sends the zygote one end of a fresh socketpair; the zygote forks a child that
starts a new session, makes itself the kernel's first choice should memory run out
(oom_score_adj 1000), takes its limits (address space, file size, processes, CPU), sends its
stdout/stderr to a size-capped file, imports the submission, runs ONE probe of the part's PROBES
and sends the outputs back (wire.py). Probes only produce tensors; every verdict is computed by the
grader. Nothing here knows an expected value.
"""

import json
import os
import socket
import sys

# python -I leaves the script's folder off sys.path: wire.py and probekit.py sit beside us. Both
# are imported now, before privileges drop: the unprivileged user cannot list this folder.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from probekit import NoisePatch  # noqa: E402
from wire import recv_msg, send_msg  # noqa: E402

# ----------------------------------------------------------------------------- sandbox start

def _hide_and_drop(user, hide):
    """As root: private mount + network namespaces, hide the grader's paths, become `user`."""
    import ctypes

    notes = []
    libc = ctypes.CDLL(None, use_errno=True)
    if hide:
        if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
            notes.append(f"no mount namespace (errno {ctypes.get_errno()}); relying on permissions")
        else:
            # MS_REC | MS_PRIVATE on /: our mounts stay ours.
            libc.mount(b"none", b"/", None, 0x4000 | 0x40000, None)
            notes += _cover_all_but(libc, [sys.prefix, sys.base_prefix, os.getcwd(),
                                           os.path.dirname(sys.executable)])
            for path in hide:
                p = os.fsencode(path)
                if os.path.isdir(path):
                    rc = libc.mount(b"tmpfs", p, b"tmpfs", 0x1 | 0x2 | 0x8,  # RDONLY NOSUID NOEXEC
                                    b"size=4k,mode=000")
                elif os.path.exists(path):
                    rc = libc.mount(b"/dev/null", p, None, 0x1000, None)  # MS_BIND
                else:
                    continue
                if rc != 0:
                    notes.append(f"could not hide {path} (errno {ctypes.get_errno()})")
    if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET: no network for student code
        notes.append("no network namespace")
    if user:
        uid, gid = user
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: children of the same user cannot ptrace us
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans of a probe come back to us
    return notes


# Top-level folders the interpreter and torch need; every other one is covered (allowlist, so a
# second checkout of the grader elsewhere on the machine is as invisible as the first).
SYSTEM_DIRS = {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "dev", "proc", "sys"}


def _cover_all_but(libc, keep):
    """Cover every non-system top-level folder with an empty tmpfs, then bind `keep` back.

    `keep`: the interpreter's prefixes and the sandbox folder. Each is opened (O_PATH) before the
    covering and bound back through /proc/self/fd, so nothing else under, e.g., /root, /work, /tmp
    or /autograder stays reachable; /tmp becomes a private, empty tmpfs.
    """
    import ctypes

    notes = []
    handles = {k: os.open(k, os.O_PATH) for k in sorted({os.path.realpath(k) for k in keep})}
    for entry in sorted(os.listdir("/")):
        top = "/" + entry
        if entry in SYSTEM_DIRS or os.path.islink(top) or not os.path.isdir(top):
            continue
        # torch's import needs a writable temp folder: a private, capped /tmp.
        options = b"size=64m,mode=1777" if top == "/tmp" else b"size=64k,mode=711"
        if libc.mount(b"tmpfs", os.fsencode(top), b"tmpfs", 0x2 | 0x4, options) != 0:  # NOSUID NODEV
            notes.append(f"could not cover {top} (errno {ctypes.get_errno()})")
    # Each kept folder is bound back at its real path and, when it was reached through a
    # symbolic link (a home folder that is a link, a venv linked into a checkout), at the link's
    # path too: paths the interpreter already holds (sys.prefix, sys.path) keep resolving.
    targets = [(path, fd) for path, fd in handles.items()]
    targets += [(k, handles[os.path.realpath(k)]) for k in sorted(set(keep))
                if os.path.abspath(k) != os.path.realpath(k)]
    for path, fd in targets:
        try:
            visible = os.path.samestat(os.stat(path), os.fstat(fd))
        except OSError:
            visible = False
        if not visible:
            try:
                os.makedirs(path, mode=0o711, exist_ok=True)
            except OSError as exc:
                notes.append(f"could not expose {path} ({exc})")
                continue
            if libc.mount(os.fsencode(f"/proc/self/fd/{fd}"), os.fsencode(path), None,
                          0x1000 | 0x4000, None) != 0:  # MS_BIND | MS_REC
                notes.append(f"could not expose {path} (errno {ctypes.get_errno()})")
    for fd in handles.values():
        os.close(fd)
    return notes


def zygote_main(argv):
    fd = int(argv[argv.index("--fd") + 1])
    user = None
    if "--user" in argv:
        uid, gid = argv[argv.index("--user") + 1].split(":")
        user = (int(uid), int(gid))
    hide = [argv[i + 1] for i, a in enumerate(argv) if a == "--hide"]
    notes = _hide_and_drop(user, hide)

    import numpy  # noqa: F401  (imported once here, shared by every fork)
    import torch  # noqa: F401
    import torch.nn.functional  # noqa: F401

    # The first op on the meta device loads ~150 MB of Python (symbolic shapes) in ~3 s: do it
    # once here rather than in every probe. Meta ops start no thread pool, so fork stays safe.
    (torch.zeros(1, device="meta") * 2).clamp(-1, 1)
    sock = socket.socket(fileno=fd)
    send_msg(sock, {"ready": True, "uid": os.getuid(), "notes": notes})
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 1 << 16, 4)
        except OSError:
            os._exit(0)
        if not msg:
            os._exit(0)
        command = json.loads(msg)
        if command.get("op") == "spawn" and fds:
            for extra in fds[1:]:
                os.close(extra)
            pid = os.fork()
            if pid == 0:
                sock.close()
                try:
                    child_main(fds[0], command)
                finally:
                    os._exit(0)
            os.close(fds[0])
            sock.sendall(json.dumps({"pid": pid}).encode())
        elif command.get("op") == "cleanup":
            _kill_children()
            sock.sendall(b'{"ok": true}')
        else:
            for extra in fds:
                os.close(extra)
            sock.sendall(b'{"error": "unknown op"}')


def _kill_children():
    """SIGKILL and reap every process whose parent is us (probe children and their orphans)."""
    import signal
    import time

    me = os.getpid()
    for _ in range(20):
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read().decode(errors="replace")
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == me:
                found = True
                try:
                    os.kill(int(entry), signal.SIGKILL)
                except OSError:
                    pass
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        if not found:
            return
        time.sleep(0.01)


# ----------------------------------------------------------------------------- a probe child

def child_main(fd, command):
    import resource
    import signal

    os.setsid()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the cap fail instead of killing
    limits = command.get("limits", {})
    log = os.open(os.path.join(command["scratch"], "output.log"),
                  os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.chdir(command["scratch"])
    _prefer_to_be_killed()
    if limits.get("fsize"):
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits["fsize"], limits["fsize"]))
    if limits.get("cpu"):
        resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu"], limits["cpu"] + 1))
    if limits.get("nproc"):
        resource.setrlimit(resource.RLIMIT_NPROC, (limits["nproc"], limits["nproc"]))
    vm_start = _status_kb("VmSize") * 1024
    if limits.get("address_space"):
        cap = vm_start + limits["address_space"]
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    import numpy as np
    import torch

    sock = socket.socket(fileno=fd)
    header = {}
    try:
        header, arrays = recv_msg(sock, max_payload=1 << 28)
        tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
        reply, out = run_probe(header, tensors)
    except BaseException as exc:  # the probe's own failure is a result, not a crash
        reply, out = _error_reply(exc, command_folder(header)), {}
    sys.stdout.flush()
    sys.stderr.flush()
    if isinstance(reply, dict):  # how much address space and memory the probe took (bench)
        reply["memory_kb"] = {"vm_start": vm_start >> 10, "vm_peak": _status_kb("VmPeak"),
                              "rss_peak": _status_kb("VmHWM")}
    arrays_out = {}
    for k, v in out.items():
        if isinstance(v, torch.Tensor):
            v = v.detach()
            if v.device.type != "cpu":
                v = v.to("cpu")
            if v.dtype == torch.bfloat16:
                v = v.float()
            arrays_out[k] = v.contiguous().numpy()
        else:
            arrays_out[k] = np.asarray(v)
    send_msg(sock, reply, arrays_out)
    sock.close()


def _status_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _prefer_to_be_killed():
    """oom_score_adj 1000: if the container runs out of memory, the kernel kills this child, not
    the grader or the zygote. Raising it needs no privilege, but /proc/self of a non-dumpable
    process (the zygote made us one) belongs to root: dumpable for the moment of the write."""
    import ctypes

    libc = ctypes.CDLL(None)
    libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE 1
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    finally:
        libc.prctl(4, 0, 0, 0, 0)


def command_folder(header):
    return header.get("submission_dir", "") if isinstance(header, dict) else ""


def _error_reply(exc, folder=""):
    import traceback

    tb = traceback.extract_tb(exc.__traceback__)
    # The last frame in the staged submission folder (the student's file or a given one).
    student = [f for f in tb if folder and os.path.dirname(f.filename) == folder]
    where = student[-1] if student else None  # never point into the grader's own code
    return {
        "ok": False,
        "error_type": type(exc).__name__,
        "message": str(exc)[:2000],
        "not_implemented": isinstance(exc, NotImplementedError),
        "where": (f"{os.path.basename(where.filename)}, line {where.lineno}, in {where.name}"
                  if where else ""),
    }


# ----------------------------------------------------------------------------- one probe

def _import_file(name, path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run_probe(header, tensors):
    """Run one probe of the part named in the header; returns (reply dict, {name: tensor}).

    header: {"probe": kind, "cfg": {...}, "module": import name of the submission,
    "probes": file name of the part's probes beside this file, "submission_dir", "seed",
    "noise_seed"}. Every standard normal draw is answered by probekit.NoisePatch, entered before
    the submission is imported so that `from torch import randn` sees it too.
    """
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(int(header.get("seed", 0)))
    if header["probe"] == "selftest":  # the grader's environment check: no submission involved
        import numpy as np

        x = torch.from_numpy(np.arange(4.0)).reshape(2, 2)
        return {"ok": True, "sum": int((x @ torch.ones(2, 1, dtype=x.dtype)).sum()),
                "torch": torch.__version__, "numpy": np.__version__}, {}
    folder = header["submission_dir"]
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = header["module"]
    noise = NoisePatch(int(header.get("noise_seed", 0)))
    with noise:
        module = _import_file(name, os.path.join(folder, name + ".py"))
        if header["probe"] == "import":
            return {"ok": True}, {}
        here = os.path.dirname(os.path.abspath(__file__))
        probes = _import_file("part_probes", os.path.join(here, os.path.basename(header["probes"])))
        reply, out = probes.PROBES[header["probe"]](module, header.get("cfg", {}), tensors, noise)
    reply.setdefault("ok", True)
    reply["noise_draws"] = noise.count
    return reply, out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "zygote":
        zygote_main(sys.argv[2:])
    else:
        sys.exit("usage: python -I worker.py zygote --fd N [--user UID:GID] [--hide PATH]...")
