"""Benchmark: grading one submission end to end (sandbox start, all tests, smoke training,
report): wall time, and the memory of the whole grading process tree (grader, zygote, probe
children) sampled as PSS (shared pages counted once: what a container is charged), with the
summed RSS and the largest process's RSS beside it, against a bare `python -c "import torch"`.
Also the memory budget the grader derives here and for Gradescope's default 768 MB container.

    python -c "from bench.grading import main; main()"      (make bench calls main())
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
MB = 1 << 20


def _run_sampled(cmd, interval=0.05):
    """Run `cmd`; return (wall s, peak RSS of its largest process, peak summed RSS, peak PSS)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    top = psutil.Process(proc.pid)
    peak_one = peak_tree = peak_pss = 0
    while proc.poll() is None:
        try:
            procs = [top] + top.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        rss, pss = [], 0
        for p in procs:
            try:
                full = p.memory_full_info()  # reads smaps: slow for torch processes (~30 ms)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss.append(full.rss)
            pss += full.pss
        if rss:
            peak_one, peak_tree = max(peak_one, max(rss)), max(peak_tree, sum(rss))
            peak_pss = max(peak_pss, pss)
        time.sleep(interval)
    wall = time.monotonic() - start
    if proc.returncode:
        raise RuntimeError(f"{cmd} exited with {proc.returncode}")
    return wall, peak_one, peak_tree, peak_pss


def _budget(*extra):
    proc = subprocess.run([sys.executable, "-m", "autograder", "check", *extra], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode:
        return None, proc.stderr.strip().splitlines()[0]
    return json.loads(proc.stdout.strip().splitlines()[-1]), ""


def main(submission="solutions"):
    _, bare, _, _ = _run_sampled([sys.executable, "-c", "import torch, time; time.sleep(0.5)"])
    with tempfile.TemporaryDirectory() as out:
        wall, one, tree, pss = _run_sampled([sys.executable, "-m", "autograder", "grade",
                                             str(ROOT / submission), "--out", out])
        score = (Path(out) / "report.md").read_text().split("**Score: ")[1].split("**")[0]
    print(f"grading {submission}: {wall:.1f} s wall (goal <= 30 s), score {score}")
    print(f"  peak PSS of the whole grading tree {pss / MB:.0f} MiB (what a container is "
          f"charged); summed RSS {tree / MB:.0f} MiB")
    print(f"  peak RSS of the largest process {one / MB:.0f} MiB = {one / bare:.2f}x bare "
          f"`import torch` ({bare / MB:.0f} MiB; goal <= 1.5x)")
    here, _ = _budget()
    if here:
        print(f"  the grader's own use once its worker is ready: {here['own_mb']} MB; the limit "
              f"here: {here['limit_mb']} MB ({here['source']})")
    gradescope, problem = _budget("--memory-limit-mb", "768")
    print("  in Gradescope's default 768 MB container: " + (
        f"each probe may use {gradescope['child_mb']} MB" if gradescope else problem))
    return {"wall_s": wall, "peak_rss": one, "bare_rss": bare, "tree_rss": tree,
            "tree_pss": pss, "budget_768": gradescope}


if __name__ == "__main__":
    main(*sys.argv[1:])
