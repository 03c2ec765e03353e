"""Benchmark: grading one submission end to end (sandbox start, all tests, smoke training,
report) -- wall time, and the peak resident memory of the largest process in the grader's
process tree, against a bare `python -c "import torch"` measured the same way.

    python -c "from bench.grading import main; main()"      (make bench calls main())
"""

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def _run_sampled(cmd, interval=0.02):
    """Run `cmd`; return (wall seconds, peak RSS of its largest process, peak RSS of the tree)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    top = psutil.Process(proc.pid)
    peak_one = peak_tree = 0
    while proc.poll() is None:
        try:
            procs = [top] + top.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        rss = []
        for p in procs:
            try:
                rss.append(p.memory_info().rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        if rss:
            peak_one, peak_tree = max(peak_one, max(rss)), max(peak_tree, sum(rss))
        time.sleep(interval)
    wall = time.monotonic() - start
    if proc.returncode:
        raise RuntimeError(f"{cmd} exited with {proc.returncode}")
    return wall, peak_one, peak_tree


def main(submission="solutions"):
    mb = 1 << 20
    _, bare, _ = _run_sampled([sys.executable, "-c", "import torch, time; time.sleep(0.5)"])
    with tempfile.TemporaryDirectory() as out:
        wall, one, tree = _run_sampled([sys.executable, "-m", "autograder", "grade",
                                        str(ROOT / submission), "--out", out])
        score = (Path(out) / "report.md").read_text().split("**Score: ")[1].split("**")[0]
    print(f"grading {submission}: {wall:.1f} s wall (goal <= 30 s), score {score}")
    print(f"  peak RSS of the largest process {one / mb:.0f} MiB = {one / bare:.2f}x bare "
          f"`import torch` ({bare / mb:.0f} MiB; goal <= 1.5x); whole tree {tree / mb:.0f} MiB")
    return {"wall_s": wall, "peak_rss": one, "bare_rss": bare, "tree_rss": tree}


if __name__ == "__main__":
    main(*sys.argv[1:])
