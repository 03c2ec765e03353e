"""The memory budget of sandboxed code, derived from where the grader runs (grader side).

The container's limit (cgroup v2 memory.max, cgroup v1 memory.limit_in_bytes, else the machine's
memory) minus what the grader's own processes use once the zygote is ready, minus a margin, is
what one probe's child may add. Sandbox enforces it twice:
- RLIMIT_AS in the child (the zygote's address space plus the budget): a large allocation fails
  at once, inside the child, as MemoryError or torch's "can't allocate memory";
- sampling: while a probe runs, the grader reads the resident anonymous memory of the zygote's
  descendants every few milliseconds (/proc/PID/status: cheap, unlike smaps) and kills them when
  what they added passes the budget (GPU probes have no RLIMIT_AS; memory outside the address
  space, such as shared memory, is caught here too).
Linux only; elsewhere the machine's memory is taken from os.sysconf.
"""

import os
from dataclasses import dataclass
from pathlib import Path

MB = 1 << 20
UNLIMITED = 1 << 60  # cgroup v1 writes ~2^63 for "no limit"


class GraderEnvironmentError(RuntimeError):
    """The grader cannot grade here (not the submission's fault): never a student's zero."""


def container_limit():
    """(bytes, where it comes from): the memory limit of the container we run in."""
    machine = _machine_memory()
    found = []
    for kind, path in _cgroup_limit_files():
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text and text != "max" and int(text) < UNLIMITED:
            found.append((int(text), kind))
    if found:
        limit, kind = min(found)
        if limit < machine:
            return limit, kind
    return machine, "machine memory"


def _machine_memory():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _cgroup_limit_files(proc_cgroup="/proc/self/cgroup", root="/sys/fs/cgroup"):
    """Every memory limit file from our cgroup up to the hierarchy's root (v2 and v1).

    Inside a container the cgroup namespace makes our cgroup "/", so the files at the mount's
    top are ours; on a host they are the root's, and ours lies below. Limits nest: the smallest
    one on the way up is the one that binds.
    """
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        lines = []
    v2_mounts = [root, f"{root}/unified"]
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":
            for mount in v2_mounts:
                for d in _ancestors(mount, rel):
                    yield "cgroup v2 memory.max", f"{d}/memory.max"
        elif "memory" in controllers.split(","):
            for d in _ancestors(f"{root}/memory", rel):
                yield "cgroup v1 memory.limit_in_bytes", f"{d}/memory.limit_in_bytes"
    if not lines:
        yield "cgroup v2 memory.max", f"{root}/memory.max"
        yield "cgroup v1 memory.limit_in_bytes", f"{root}/memory/memory.limit_in_bytes"


def _ancestors(mount, rel):
    parts = [p for p in rel.strip("/").split("/") if p]
    for i in range(len(parts), -1, -1):
        yield "/".join([mount, *parts[:i]]) if i else mount


def status_kb(pid, fields=("RssAnon", "RssShmem")):
    """Sum of `fields` of /proc/PID/status in kB (None if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return None
    total = 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in fields:
            total += int(value.split()[0])
    return total


def descendants(pid):
    """The pids of every process below `pid` (/proc/PID/task/TID/children, else a /proc scan)."""
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tids = os.listdir(f"/proc/{parent}/task")
            kids = []
            for tid in tids:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    kids += [int(k) for k in f.read().split()]
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{parent}"):
                continue
            return _descendants_by_scan(pid)  # a kernel without CONFIG_PROC_CHILDREN
        except (OSError, ValueError):
            continue
        out += kids
        todo += kids
    return out


def _descendants_by_scan(pid):
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


def private_kb(pid):
    """Resident anonymous + shared-memory kB of `pid` (what forked children copy-share)."""
    return status_kb(pid) or 0


def pss_bytes(pids):
    """Proportional set size of `pids` together (smaps_rollup; slow: for measuring only). Where
    it cannot be read (a non-dumpable process of ours when we are not root), the resident set
    size stands in: larger, so the budget errs on the safe side."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            total += (status_kb(pid, ("VmRSS",)) or 0) * 1024
    return total


def tree_pss(pid):
    """PSS of `pid` and all its descendants, in bytes: the memory the container is charged."""
    return pss_bytes([pid, *descendants(pid)])


@dataclass
class Budget:
    """One memory budget: the limit, what the grader itself uses, and what a probe may add."""

    limit_mb: int
    source: str
    own_mb: int
    margin_mb: int
    child_mb: int

    def describe(self):
        return (f"memory: limit {self.limit_mb} MB ({self.source}), grader's own use "
                f"{self.own_mb} MB, margin {self.margin_mb} MB: each probe may use "
                f"{self.child_mb} MB")


def make_budget(own_bytes, limit_mb=None, margin_mb=96, min_child_mb=150, shares=1,
                max_child_mb=None):
    """The Budget left by `own_bytes` under the limit; GraderEnvironmentError if too small.

    limit_mb: None detects the container's limit. shares: probes that may run at once (one per
    sandbox of grade-all --jobs), each getting an equal part. max_child_mb: a cap (no probe of a
    correct submission needs much; a runaway one should not take a staff laptop's memory).
    """
    if limit_mb is None:
        limit, source = container_limit()
        limit_mb = limit // MB
    else:
        source = "--memory-limit-mb"
    own_mb = -(-int(own_bytes) // MB)
    child_mb = (limit_mb - own_mb - margin_mb) // max(1, shares)
    if child_mb < min_child_mb:
        needed = own_mb + margin_mb + min_child_mb * max(1, shares)
        raise GraderEnvironmentError(
            f"grader environment error: {needed} MB needed, the limit is {limit_mb} MB "
            f"({source}; the grader itself uses {own_mb} MB, each probe needs at least "
            f"{min_child_mb} MB). Give the container more memory (Gradescope: Autograder "
            f"Settings, memory) or pass a larger --memory-limit-mb.")
    if max_child_mb:
        child_mb = min(child_mb, max_child_mb)
    return Budget(int(limit_mb), source, own_mb, margin_mb, int(child_mb))
