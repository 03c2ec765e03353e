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
  file, a wall-clock deadline and a memory budget enforced here (memory.py: the container's limit
  less the grader's own use, checked by sampling), oom_score_adj 1000 (if the kernel must kill,
  it kills the child); afterwards the child's process group is killed and the zygote (a child
  subreaper) kills any orphans that escaped the group.
- Before the first probe the sandbox checks that it can grade at all (the worker starts, imports
  numpy and torch, forks a child that computes; the memory budget fits): if not, it raises
  GraderEnvironmentError, which is never turned into a student's score.
- Outputs come back as raw numeric arrays (wire.recv_msg: no pickle, sizes checked).
"""

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import memory, wire
from .memory import GraderEnvironmentError

__all__ = ["GraderEnvironmentError", "Limits", "ProbeResult", "Sandbox"]

HERE = Path(__file__).resolve().parent
RUNTIME_FILES = ("worker.py", "wire.py", "probekit.py")  # copied into the sandbox
CUDA_HOST_MB = 1024  # added to a GPU probe's sampled budget for the CUDA context


@dataclass
class Limits:
    """Per-probe limits. The defaults are the ones used on Gradescope."""

    timeout_s: float = 10.0          # wall clock per probe (the reference's take < 0.5 s)
    hang_pool_s: float = 30.0        # after a timeout, later probes share what is left of this
    after_hangs_timeout_s: float = 5.0  # ... and never get less than this
    memory_limit_mb: int = None      # the container's limit; None: detected (memory.py)
    memory_margin_mb: int = 96       # kept free under the limit (the grader grows while grading)
    min_probe_memory_mb: int = 150   # less than this for a probe: grader environment error
    max_probe_memory_mb: int = 512   # a cap: the reference's probes add < 50 MB
    memory_shares: int = 1           # probes running at once (grade-all --jobs): each gets 1/n
    address_space_mb: int = None     # RLIMIT_AS headroom above the zygote; None: the budget
    sample_interval_s: float = 0.02  # how often a running probe's memory is read
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
    status: str = "ok"             # ok | error | timeout | memory | crashed | skipped
    error: str = ""                # short text for the report
    not_implemented: bool = False
    output: str = ""               # the first bytes the student code printed
    seconds: float = 0.0
    memory_limit_mb: int = 0       # the budget the probe ran under (for "ran out of memory")
    peak_mb: float = 0.0           # the most it added (sampled), MB


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
        self.budget = None         # memory.Budget, set when the zygote first starts
        self._checked = False
        self.check_scratch = self.root / "scratch-check"
        self.check_scratch.mkdir(mode=0o700)
        if self.user:
            os.chown(self.check_scratch, *self.user)

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
        if not self._checked:  # the grader alone does not fit: say so before starting torch
            self._make_budget(memory.pss_bytes([os.getpid()]))
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cmd = [_interpreter(), "-I", str(self.root / "worker.py"), "zygote",
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
            raise GraderEnvironmentError(
                f"grader environment error: the sandbox worker did not start ({exc}). Check "
                f"that `{_interpreter()} -I -c 'import numpy, torch'` works"
                + (" for the worker user (chmod -R a+rX the Python environment)"
                   if self.user else "")
                + f". Its log:\n{tail.strip()}") from exc
        self.worker_uid = header.get("uid")
        self.notes = list(header.get("notes", []))
        if not self._checked:
            self._check()

    def _check(self):
        """Can this sandbox grade? A child computes with numpy and torch; the budget fits."""
        lim = self.limits
        self._make_budget(memory.pss_bytes([os.getpid()])
                          + lim.memory_shares * memory.pss_bytes([self._zygote.pid]))
        result = self._probe_once({"probe": "selftest"}, {}, max(lim.timeout_s, 30.0),
                                  scratch=self.check_scratch)
        if not result.ok or result.header.get("sum") != 6:
            self._kill_zygote()
            raise GraderEnvironmentError(
                "grader environment error: the sandbox worker started but could not compute "
                f"with torch and numpy ({result.status}: {result.error}). Check the Python "
                f"environment at {sys.prefix}.\n{result.output.strip()}")
        self._checked = True

    def _make_budget(self, own_bytes):
        lim = self.limits
        try:
            self.budget = memory.make_budget(own_bytes, lim.memory_limit_mb, lim.memory_margin_mb,
                                             lim.min_probe_memory_mb, lim.memory_shares,
                                             lim.max_probe_memory_mb)
        except GraderEnvironmentError:
            self._kill_zygote()
            raise

    def check(self):
        """Start the worker and check that it can grade (GraderEnvironmentError if not)."""
        if not self._alive():
            self._kill_zygote()
            self._start()
        return self.budget

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

    def _probe_once(self, header, arrays, timeout, scratch=None):
        lim = self.limits
        scratch = scratch or self.scratch
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        budget_mb = self.budget.child_mb if self.budget else 0
        headroom = lim.address_space_mb if lim.address_space_mb is not None else budget_mb
        # CUDA maps tens of GB of address space: a GPU probe goes without RLIMIT_AS (the
        # sampling below still holds its host memory to the budget).
        gpu = bool(header.get("cfg", {}).get("cuda"))
        command = {"op": "spawn", "scratch": str(scratch), "limits": {
            "fsize": lim.output_bytes,
            "cpu": int(timeout) + 5,
            "nproc": lim.nproc if self.user else 0,
            "address_space": 0 if gpu or not headroom else headroom << 20,
        }}
        base_kb = memory.private_kb(self._zygote.pid)
        start = time.monotonic()
        try:
            pid = self._zygote_call(command, [theirs.fileno()])["pid"]
        except (OSError, ValueError, KeyError) as exc:
            ours.close()
            theirs.close()
            self._kill_zygote()
            raise _ZygoteLost() from exc
        theirs.close()
        # A CUDA context costs host memory of its own (driver, kernels): not the student's. Not
        # measured here (no GPU); Gradescope has none, so this only matters on staff machines.
        watched_mb = budget_mb + (CUDA_HOST_MB if gpu else 0)
        watch = _MemoryWatch(self._zygote.pid, base_kb, watched_mb << 10, lim.sample_interval_s)
        if budget_mb:
            watch.start()
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
                if _out_of_memory(reply.get("error_type", ""), reply.get("message", "")):
                    result.status = "memory"
                    tried = re.search(r"tried to allocate (\d+) bytes", reply.get("message", ""))
                    if tried:  # torch's allocator message is a page long: its gist
                        result.error = (f"allocating {int(tried.group(1)) / (1 << 20):.0f} MB "
                                        f"failed{where}")
        except TimeoutError:
            result = ProbeResult(False, status="timeout",
                                 error=f"did not finish within {timeout:g} s (time limit)"
                                       + _memory_note(pid))
        except (wire.WireError, OSError, ValueError) as exc:
            result = ProbeResult(False, status="crashed",
                                 error=f"the worker process ended without a result ({exc})")
        finally:
            watch.stop()
            ours.close()
            _killpg(pid)
            try:
                self._zygote_call({"op": "cleanup"})
            except (OSError, ValueError):
                self._kill_zygote()
        result.seconds = time.monotonic() - start
        result.memory_limit_mb = budget_mb
        result.peak_mb = watch.peak_kb / 1024
        result.output = _read_head(scratch / "output.log", 4000)
        # Stopped by our sampling, killed (SIGKILL, by the kernel) close to the budget, or a crash
        # whose output says so: each reads "ran out of memory".
        near = budget_mb and watch.peak_kb >= 0.75 * watch.limit_kb
        if watch.exceeded:
            result.ok, result.status = False, "memory"
            result.error = f"it was stopped at {result.peak_mb:.0f} MB"
        elif result.status == "crashed" and (near or _out_of_memory("", result.output)):
            result.status = "memory"
            result.error = f"it was killed at {result.peak_mb:.0f} MB ({result.error})"
        if result.status == "memory":
            result.error = f"ran out of memory (limit {budget_mb} MB): {result.error}"
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


class _MemoryWatch(threading.Thread):
    """Samples what the zygote's descendants added to its resident memory; kills them all when
    it passes `limit_kb`. Anonymous pages shared with the zygote (copy on write) count once."""

    def __init__(self, zygote_pid, base_kb, limit_kb, interval):
        super().__init__(daemon=True)
        self.zygote_pid, self.base_kb, self.limit_kb = zygote_pid, base_kb, limit_kb
        self.interval = interval
        self.peak_kb = 0
        self.exceeded = False
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.wait(self.interval):
            pids = memory.descendants(self.zygote_pid)
            used = sum(max(0, memory.private_kb(p) - self.base_kb) for p in pids)
            self.peak_kb = max(self.peak_kb, used)
            if used > self.limit_kb:
                self.exceeded = True
                for p in pids:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except OSError:
                        pass
                return

    def stop(self):
        self._stop_event.set()
        if self.is_alive():
            self.join()


_OOM = re.compile(r"can't allocate memory|DefaultCPUAllocator|out of memory|"
                  r"Cannot allocate memory|MemoryError|OutOfMemoryError", re.IGNORECASE)


def _out_of_memory(error_type, message):
    return error_type in ("MemoryError", "OutOfMemoryError") or bool(_OOM.search(message or ""))


def _interpreter():
    """sys.executable with its folder resolved: the worker's sys.prefix is then a real path,
    which the sandbox's mount namespace binds back (a symbolic link on the way would not
    resolve there). The file name stays, so a virtual environment is still found."""
    exe = Path(sys.executable)
    return str(exe.parent.resolve() / exe.name)


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
