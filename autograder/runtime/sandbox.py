"""Runs untrusted code: a zygote process per Sandbox, a fresh forked child per probe.

Security model (see README, "Security model"):
- The grader (this process) never imports student code. Student code runs only in children of
  a zygote started from autograder/runtime/worker.py; the zygote drops to an unprivileged user when the
  grader is root (`nobody`, or the user Gradescope's setup.sh creates), inside a private mount
  namespace where the grader's tree, the results directory and the original submission are
  covered by empty tmpfs mounts, and a private network namespace.
- The sandbox directory holds only copies of the submission and the given files (root-owned,
  world-readable) and a scratch directory owned by the worker user.
- Each probe: fresh child (new session), RLIMIT_AS/FSIZE/NPROC/CPU, stdout+stderr to a capped
  file, a wall-clock deadline enforced here; afterwards the child's process group is killed and
  the zygote (a child subreaper) kills any orphans that escaped the group.
- Outputs come back as raw numeric arrays (wire.recv_msg: no pickle, sizes checked).
"""

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import wire

HERE = Path(__file__).resolve().parent
RUNTIME_FILES = ("worker.py", "wire.py", "probekit.py")  # copied into the sandbox


@dataclass
class Limits:
    """Per-probe limits. The defaults are the ones used on Gradescope."""

    timeout_s: float = 20.0          # wall clock per probe
    address_space_mb: int = 1024     # RLIMIT_AS headroom above the forked zygote's mapping
    output_bytes: int = 1 << 20      # RLIMIT_FSIZE: stdout/stderr and any file the code writes
    nproc: int = 64                  # RLIMIT_NPROC (only when running as a dedicated user)
    max_reply_bytes: int = 64 << 20  # largest reply accepted from a probe
    start_timeout_s: float = 120.0   # zygote start (imports torch)


@dataclass
class ProbeResult:
    """What came back from one probe. `ok` is False on any failure (error, timeout, crash)."""

    ok: bool
    header: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)
    status: str = "ok"             # ok | error | timeout | crashed | bad_reply
    error: str = ""                # short text for the report
    not_implemented: bool = False
    output: str = ""               # the first bytes the student code printed
    seconds: float = 0.0


def _worker_user():
    """(uid, gid) to run student code as, or None when we are not root (no privileges to drop)."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("AUTOGRADER_WORKER_USER", "")
    for candidate in ([name] if name else []) + ["autograder-student", "nobody"]:
        try:
            entry = pwd.getpwnam(candidate)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    raise RuntimeError("running as root but no unprivileged user (nobody) exists")


class Sandbox:
    """A zygote (imports torch once) that forks one limited, unprivileged child per probe.

    Args:
        hide: paths the worker must not see (grader tree, results dir, original submission).
        limits: Limits; per-call timeouts etc.
    Use `load(files)` to stage a submission (name -> source path), then `probe(header, arrays)`.
    Reusable across submissions (each `load` gets a fresh directory); `close()` when done.
    """

    def __init__(self, hide=(), limits=None):
        self.limits = limits or Limits()
        self.user = _worker_user()
        self.root = Path(tempfile.mkdtemp(prefix="ddpm-sandbox-"))
        os.chmod(self.root, 0o711)
        for name in RUNTIME_FILES:
            shutil.copy(HERE / name, self.root / name)
            os.chmod(self.root / name, 0o644)
        inside = [Path(sys.prefix).resolve(), Path(sys.executable).resolve(), self.root.resolve()]
        self.hide = [str(Path(p).resolve()) for p in hide
                     if Path(p).exists() and not any(_is_within(q, Path(p).resolve()) for q in inside)]
        self.notes = []
        self._zygote = None
        self._sock = None
        self._count = 0
        self.submission_dir = None
        self.scratch = None
        self.module = None
        self.probes_file = None

    # -- staging ---------------------------------------------------------------------------
    def load(self, files, module=None, probes=None):
        """Copy `files` ({name in sandbox: source path}) into a fresh, read-only directory.

        module: the name the probes import (default: the first file's stem); probes: the path of
        a part's probes.py (its PROBES answer probe kinds other than "import").
        """
        self._count += 1
        sub = self.root / f"submission-{self._count}"
        sub.mkdir(mode=0o755)
        for name, src in files.items():
            shutil.copyfile(src, sub / name)
            os.chmod(sub / name, 0o644)
        self.module = module or Path(next(iter(files))).stem
        self.probes_file = None
        if probes is not None:
            self.probes_file = f"probes-{self._count}.py"
            shutil.copyfile(probes, self.root / self.probes_file)
            os.chmod(self.root / self.probes_file, 0o644)
        os.chmod(sub, 0o755)
        scratch = self.root / f"scratch-{self._count}"
        scratch.mkdir(mode=0o700)
        if self.user:
            os.chown(scratch, *self.user)
        self.submission_dir, self.scratch = sub, scratch
        return sub

    # -- zygote ----------------------------------------------------------------------------
    def _start(self):
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cmd = [sys.executable, "-I", str(self.root / "worker.py"), "zygote",
               "--fd", str(child.fileno())]
        if self.user:
            cmd += ["--user", f"{self.user[0]}:{self.user[1]}"]
            for path in self.hide:
                cmd += ["--hide", path]
        log = open(self.root / "zygote.log", "ab")  # noqa: SIM115 - owned by the Popen
        self._zygote = subprocess.Popen(
            cmd, pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            cwd=str(self.root), start_new_session=True, env=_clean_env())
        log.close()
        child.close()
        self._sock = parent
        parent.settimeout(self.limits.start_timeout_s)
        try:
            header, _ = wire.recv_msg(parent, max_payload=0)
        except (OSError, wire.WireError) as exc:
            tail = (self.root / "zygote.log").read_bytes()[-2000:].decode(errors="replace")
            self._kill_zygote()
            raise RuntimeError(f"sandbox worker did not start: {exc}\n{tail}") from exc
        self.worker_uid = header.get("uid")
        self.notes = list(header.get("notes", []))

    def _alive(self):
        return self._zygote is not None and self._zygote.poll() is None

    def _zygote_call(self, command, fds=()):
        self._sock.settimeout(10)
        socket.send_fds(self._sock, [json.dumps(command).encode()], list(fds))
        reply = self._sock.recv(1 << 16)
        if not reply:
            raise OSError("zygote closed the connection")
        return json.loads(reply)

    # -- probes ----------------------------------------------------------------------------
    def probe(self, header, arrays=None, timeout_s=None):
        """Run one probe in a fresh child; never raises for anything the student code does."""
        if self.submission_dir is None:
            raise RuntimeError("Sandbox.load(files) first")
        timeout = float(timeout_s or self.limits.timeout_s)
        header = dict(header, submission_dir=str(self.submission_dir), module=self.module,
                      probes=self.probes_file or "")
        for attempt in range(2):
            if not self._alive():
                self._kill_zygote()
                self._start()
            try:
                return self._probe_once(header, arrays or {}, timeout)
            except _ZygoteLost:
                if attempt:
                    return ProbeResult(False, status="crashed",
                                       error="the sandbox worker died (killed by the submission?)")
        raise AssertionError("unreachable")

    def _probe_once(self, header, arrays, timeout):
        lim = self.limits
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # CUDA maps tens of GB of address space: a GPU probe goes without RLIMIT_AS.
        gpu = bool(header.get("cfg", {}).get("cuda"))
        command = {"op": "spawn", "scratch": str(self.scratch), "limits": {
            "fsize": lim.output_bytes,
            "cpu": int(timeout) + 5,
            "nproc": lim.nproc if self.user else 0,
            "address_space": 0 if gpu else lim.address_space_mb << 20,
        }}
        start = time.monotonic()
        try:
            pid = self._zygote_call(command, [theirs.fileno()])["pid"]
        except (OSError, ValueError, KeyError) as exc:
            ours.close()
            theirs.close()
            self._kill_zygote()
            raise _ZygoteLost() from exc
        theirs.close()
        result = None
        try:
            ours.settimeout(timeout)
            wire.send_msg(ours, header, arrays)
            deadline = start + timeout
            ours.settimeout(max(0.05, deadline - time.monotonic()))
            reply, out = _recv_with_deadline(ours, lim.max_reply_bytes, deadline)
            result = ProbeResult(bool(reply.get("ok")), reply, out,
                                 status="ok" if reply.get("ok") else "error")
            if not result.ok:
                result.not_implemented = bool(reply.get("not_implemented"))
                where = f" ({reply['where']})" if reply.get("where") else ""
                result.error = f"{reply.get('error_type', 'Error')}: {reply.get('message', '')}{where}"
                if reply.get("error_type") == "MemoryError":
                    result.error += (f"; it ran out of memory (the memory limit is "
                                     f"{lim.address_space_mb} MB)")
        except TimeoutError:
            result = ProbeResult(False, status="timeout",
                                 error=f"did not finish within {timeout:g} s (time limit)"
                                       + _memory_note(pid))
        except (wire.WireError, OSError, ValueError) as exc:
            result = ProbeResult(False, status="crashed",
                                 error=f"the worker process ended without a result ({exc})")
        finally:
            ours.close()
            _killpg(pid)
            try:
                self._zygote_call({"op": "cleanup"})
            except (OSError, ValueError):
                self._kill_zygote()
        result.seconds = time.monotonic() - start
        result.output = _read_head(self.scratch / "output.log", 4000)
        if result.status == "crashed":
            result.error += _crash_hint(result.output)
        return result

    def close(self):
        self._kill_zygote()
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill_zygote(self):
        if self._zygote is not None:
            _killpg(self._zygote.pid)
            try:
                self._zygote.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self._sock is not None:
            self._sock.close()
        self._zygote, self._sock = None, None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _ZygoteLost(Exception):
    pass


def _recv_with_deadline(sock, max_bytes, deadline):
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    sock.settimeout(remaining)
    try:
        return wire.recv_msg(sock, max_payload=max_bytes)
    except TimeoutError as exc:
        raise TimeoutError from exc


def _killpg(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass


def _memory_note(pid):
    """A few words on the memory a timed-out probe was using (its resident set)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError):
        return ""
    return f"; it was using {rss_kb / 1024:.0f} MB of memory" if rss_kb > 1 << 20 else ""


def _read_head(path, limit):
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError:
        return ""
    text = data[:limit].decode(errors="replace")
    return text + ("\n[... output truncated ...]" if len(data) > limit else "")


def _crash_hint(output):
    if "MemoryError" in output or "out of memory" in output.lower():
        return "; it ran out of memory (memory limit)"
    return ""


def _is_within(path, ancestor):
    try:
        path.relative_to(ancestor)
        return True
    except ValueError:
        return False


def _clean_env():
    keep = ("PATH", "LANG", "LC_ALL", "HOME", "CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1",
               HOME="/nonexistent")
    return env
