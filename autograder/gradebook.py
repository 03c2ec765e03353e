"""grade-all: grade every submission in a folder; write a gradebook and a summary.

Each entry of SUBMISSIONS_DIR (a diffusion.py-like file, or a folder per student) is graded into
OUT/<name>/ (results.json, report.md). Then OUT/gradebook.csv (one row per submission: total,
grading time, notes such as a renamed file, timeouts or a grading error, and one column per
test) and OUT/summary.md (score histogram, the submissions that need a look, most-failed tests).
`--jobs N` runs N sandboxes (zygotes) in parallel threads; each is reused across its submissions.
Progress goes to stderr: a bar with the submissions being graded (one line per submission when
stderr is not a terminal). A grader environment error (GraderEnvironmentError) stops grading and
raises: no gradebook of zeros. Each of the N sandboxes' probes gets 1/N of the memory budget.
"""

import csv
import dataclasses
import queue
import re
import sys
import threading
import time
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


class Progress:
    """Which submissions are being graded and how far along the class is, on `stream`.

    On a terminal: one bar, redrawn every second, naming the submissions in progress and how
    long each has been running (a hanging one shows). Otherwise: a line per finished submission,
    and a "still grading" line every `every_s` seconds for one that takes long.
    """

    def __init__(self, total, stream=None, every_s=30.0):
        self.total, self.stream, self.every_s = total, stream or sys.stderr, every_s
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done, self.running, self.lock = 0, {}, threading.Lock()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True)
        self._said = {}

    def __enter__(self):
        self._ticker.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._ticker.join()
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def start(self, name):
        with self.lock:
            self.running[name] = time.monotonic()
            self._draw()

    def finish(self, name, line):
        with self.lock:
            self.running.pop(name, None)
            self.done += 1
            if not self.tty:
                self.stream.write(f"[{self.done}/{self.total}] {line}\n")
            self._draw()

    def _tick(self):
        while not self._stop.wait(1.0):
            with self.lock:
                self._draw()
                if not self.tty:
                    now = time.monotonic()
                    for name, began in self.running.items():
                        due = self._said.get(name, began) + self.every_s
                        if now >= due:
                            self._said[name] = now
                            self.stream.write(f"  still grading {name} ({now - began:.0f} s)\n")
                    self.stream.flush()

    def _draw(self):
        if not self.tty:
            return
        width = 20
        filled = round(width * self.done / max(1, self.total))
        now = time.monotonic()
        current = ", ".join(f"{n} ({now - s:.0f} s)" for n, s in self.running.items())
        line = f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}"
        if current:
            line += f"  grading {current}"
        self.stream.write("\r\x1b[2K" + line[:200])
        self.stream.flush()


def grade_all(submissions_dir, out_dir, *, jobs=2, limits=None, progress_stream=None):
    """Grade every entry of `submissions_dir`; returns the summary text."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = _entries(submissions_dir)
    todo = queue.Queue()
    for e in entries:
        todo.put(e)
    results, details = {}, {}
    lock = threading.Lock()
    failures = []
    n = max(1, min(jobs, len(entries)))
    limits = limits or Limits()
    if limits.memory_shares < n:
        limits = dataclasses.replace(limits, memory_shares=n)

    def work(progress):
        sandbox = None
        try:
            sandbox = Sandbox(hide=default_hide(out, submissions_dir), limits=limits)
            sandbox.check()
            while not failures:
                try:
                    entry = todo.get_nowait()
                except queue.Empty:
                    return
                progress.start(entry.name)
                info = {}
                res = grade_submission(entry, out / _safe_name(entry), sandbox=sandbox,
                                       details=info)
                total = sum(t["max_score"] for t in res["tests"])
                progress.finish(entry.name, f"{entry.name}: {res['score']:g} / {total:g} in "
                                            f"{res['execution_time']:.1f} s")
                with lock:
                    results[entry], details[entry] = res, info
        except GraderEnvironmentError as exc:
            failures.append(exc)
        finally:
            if sandbox is not None:
                sandbox.close()

    with Progress(len(entries), progress_stream) as progress:
        threads = [threading.Thread(target=work, args=(progress,)) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if failures:
        raise failures[0]
    return write_gradebook(out, [(e, results[e], details.get(e, {}))
                                 for e in entries if e in results])


FLAG_LABELS = {"grading_error": "grading error (the grader or its environment failed)",
               "timeout": "timeout", "renamed": "renamed file", "missing": "no submission file",
               "import_error": "does not import"}


def _notes(info):
    return "; ".join(f"{kind.replace('_', ' ')}: {text}" for kind, text in info.get("flags", []))


def _untouched(res):
    """Every test failed saying 'not implemented': the stub as released."""
    return bool(res["tests"]) and all(t["status"] != "passed" and "not implemented" in
                                      t["output"].lower() for t in res["tests"])


def write_gradebook(out, graded):
    """gradebook.csv and summary.md from [(entry, results, details)]; returns the summary."""
    graded = [g if len(g) == 3 else (*g, {}) for g in graded]
    names = []
    for _, res, _ in graded:
        for t in res["tests"]:
            if t["name"] not in names:
                names.append(t["name"])
    with open(out / "gradebook.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["submission", "score", "max_score", "grading_time_s", "notes"] + names)
        for entry, res, info in graded:
            by_name = {t["name"]: t["score"] for t in res["tests"]}
            w.writerow([entry.name, res["score"], sum(t["max_score"] for t in res["tests"]),
                        res.get("execution_time", ""), _notes(info)]
                       + [by_name.get(n, "") for n in names])
    scores = [res["score"] for _, res, _ in graded]
    # Functions left unimplemented say nothing about which tests are hard: not counted.
    failed = Counter(t["name"] for _, res, _ in graded for t in res["tests"]
                     if t["status"] != "passed" and "not implemented" not in t["output"].lower())
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
    attention = []
    for entry, res, info in graded:
        why = [FLAG_LABELS.get(kind, kind) + f": {text}" for kind, text in info.get("flags", [])]
        if _untouched(res):
            why.append("the stub, untouched (every test says not implemented)")
        if res["score"] == 0:
            why.insert(0, "score 0")
        if why:
            attention.append(f"- {entry.name}: " + "; ".join(why))
    lines += ["", f"## Needs attention ({len(attention)})", ""]
    lines += attention or ["(none: no grading errors, timeouts, renamed files or zero scores)"]
    lines += ["", "## Most-failed tests", "",
              "(failures that say 'not implemented' are not counted)", ""]
    lines += [f"- {n} x {name}" for name, n in failed.most_common(10)] or ["(none)"]
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text
