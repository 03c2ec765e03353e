"""grade-all: grade every submission in a folder; write a gradebook and a summary.

Each entry of SUBMISSIONS_DIR (a diffusion.py-like file, or a folder per student) is graded into
OUT/<name>/ (results.json, report.md). Then OUT/gradebook.csv (one row per submission: total
and one column per test) and OUT/summary.md (score histogram, most-failed tests).
`--jobs N` runs N sandboxes (zygotes) in parallel threads; each is reused across its submissions.
A grader environment error (GraderEnvironmentError) stops grading and raises: no gradebook of
zeros. Each of the N sandboxes' probes gets 1/N of the memory budget.
"""

import csv
import dataclasses
import queue
import re
import threading
from collections import Counter
from pathlib import Path

from .grade import default_hide, grade_submission
from .runtime.sandbox import GraderEnvironmentError, Limits, Sandbox


def _entries(folder):
    folder = Path(folder)
    items = [p for p in sorted(folder.iterdir())
             if not p.name.startswith(".") and (p.is_dir() or p.suffix == ".py")]
    return items


def _safe_name(path):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", path.stem if path.is_file() else path.name) or "sub"


def grade_all(submissions_dir, out_dir, *, jobs=2, limits=None):
    """Grade every entry of `submissions_dir`; returns the summary text."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = _entries(submissions_dir)
    todo = queue.Queue()
    for e in entries:
        todo.put(e)
    results = {}
    lock = threading.Lock()
    failures = []
    n = max(1, min(jobs, len(entries)))
    limits = limits or Limits()
    if limits.memory_shares < n:
        limits = dataclasses.replace(limits, memory_shares=n)

    def work():
        sandbox = None
        try:
            sandbox = Sandbox(hide=default_hide(out, submissions_dir), limits=limits)
            sandbox.check()
            while not failures:
                try:
                    entry = todo.get_nowait()
                except queue.Empty:
                    return
                res = grade_submission(entry, out / _safe_name(entry), sandbox=sandbox)
                with lock:
                    results[entry] = res
        except GraderEnvironmentError as exc:
            failures.append(exc)
        finally:
            if sandbox is not None:
                sandbox.close()

    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise failures[0]
    return write_gradebook(out, [(e, results[e]) for e in entries if e in results])


def write_gradebook(out, graded):
    names = []
    for _, res in graded:
        for t in res["tests"]:
            if t["name"] not in names:
                names.append(t["name"])
    with open(out / "gradebook.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["submission", "score", "max_score"] + names)
        for entry, res in graded:
            by_name = {t["name"]: t["score"] for t in res["tests"]}
            w.writerow([entry.name, res["score"], sum(t["max_score"] for t in res["tests"])]
                       + [by_name.get(n, "") for n in names])
    scores = [res["score"] for _, res in graded]
    failed = Counter(t["name"] for _, res in graded for t in res["tests"] if t["status"] != "passed")
    lines = [f"# Gradebook summary: {len(graded)} submissions", ""]
    if scores:
        lines.append(f"mean {sum(scores) / len(scores):.1f}, min {min(scores):g}, "
                     f"max {max(scores):g}")
        lines += ["", "## Score histogram", "", "```"]
        for lo in range(0, 101, 10):
            hi = lo + 10
            n = sum(1 for s in scores if lo <= s < hi or (lo == 100 and s >= 100))
            if lo == 100 and not n:
                continue
            label = "100" if lo == 100 else f"{lo:3d}-{hi - 1:<3d}"
            lines.append(f"{label:>8} | {'#' * n} {n}")
        lines.append("```")
    lines += ["", "## Most-failed tests", ""]
    for name, n in failed.most_common(10):
        lines.append(f"- {n} x {name}")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text
