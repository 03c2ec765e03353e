"""The sandbox really isolates: privileges, hidden paths, time/memory/output limits, orphans.

Each test stages a small hostile "diffusion.py" whose top-level code does the hostile thing and
prints what it managed; the grader reads only the capped output and the probe's status.
"""

import dataclasses
import os
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from autograder.grade import ROOT
from autograder.runtime.sandbox import Limits, Sandbox

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="privilege drop needs root")


@pytest.fixture(scope="module")
def secrets(tmp_path_factory):
    d = tmp_path_factory.mktemp("grader-secrets")
    (d / "expected.txt").write_text("the hidden answer")
    os.chmod(d / "expected.txt", 0o600)
    results = d / "results"
    results.mkdir(mode=0o700)
    return d


@pytest.fixture(scope="module")
def sandbox(secrets):
    limits = Limits(timeout_s=4, address_space_mb=512, output_bytes=64 << 10)
    with Sandbox(hide=[secrets, *ROOT.iterdir()], limits=limits) as sb:
        yield sb


def run(sandbox, source, **kw):
    folder = Path(sandbox.root).parent / f"src-{time.monotonic_ns()}"
    folder.mkdir()
    (folder / "diffusion.py").write_text(textwrap.dedent(source))
    sandbox.load({"diffusion.py": folder / "diffusion.py"})
    return sandbox.probe({"probe": "import"}, **kw)


@ROOT_ONLY
def test_worker_runs_unprivileged_and_cannot_read_grader_files(sandbox, secrets):
    r = run(sandbox, f"""
        import os
        print("uid", os.getuid())
        for p in [{str(secrets / "expected.txt")!r}, {str(ROOT / "solutions" / "diffusion.py")!r},
                  {str(ROOT / "tests_hidden" / "rubric.toml")!r}]:
            try:
                open(p).read()
                print("READ", p)
            except OSError as e:
                print("DENIED", p, type(e).__name__)
        try:
            open({str(secrets / "results" / "results.json")!r}, "w").write("{{}}")
            print("WROTE results")
        except OSError:
            print("DENIED results")
    """)
    assert r.ok, r.error
    assert "uid 0" not in r.output and f"uid {os.getuid()}" not in r.output
    assert "READ" not in r.output and "WROTE" not in r.output
    assert r.output.count("DENIED") == 4
    assert (ROOT / "solutions" / "diffusion.py").read_text()  # still there for the grader


@ROOT_ONLY
def test_worker_sees_no_world_readable_file_outside_python_and_its_folder(sandbox, tmp_path):
    # A second checkout of the grader (e.g. CI's clone beside the developers' one) is not in the
    # hide list; only the allowlist of system folders, Python and the sandbox stays reachable.
    stray = tmp_path / "another-checkout" / "tests_hidden"
    stray.mkdir(parents=True)
    (stray / "rubric.toml").write_text("world-readable copy")
    os.chmod(stray / "rubric.toml", 0o644)
    for d in (stray, stray.parent, tmp_path):
        os.chmod(d, 0o755)
    r = run(sandbox, f"""
        import os
        try:
            print("READ", open({str(stray / "rubric.toml")!r}).read())
        except OSError as e:
            print("DENIED", type(e).__name__)
        print("TMP", sorted(os.listdir("/tmp")))
    """)
    assert r.ok, r.error
    assert "DENIED" in r.output and "READ" not in r.output
    # /tmp is the worker's own: the host's temporary files (this test's among them) are not there.
    assert tmp_path.parts[1] != "tmp" or tmp_path.parts[2] not in r.output


def test_infinite_loop_is_stopped_at_the_time_limit(sandbox):
    start = time.monotonic()
    r = run(sandbox, "while True:\n    pass\n", timeout_s=1.5)
    assert r.status == "timeout" and "time limit" in r.error
    assert time.monotonic() - start < 1.5 + 3


def test_memory_hog_hits_the_memory_limit(sandbox):
    r = run(sandbox, "x = bytearray(2 << 30)\nprint('allocated')\n")
    assert not r.ok and "allocated" not in r.output
    assert "MemoryError" in r.error or r.status == "crashed"


@contextmanager
def budget(sandbox, child_mb, address_space_mb):
    """Run with a per-probe memory budget of `child_mb` (address_space_mb=0: no RLIMIT_AS, so
    only the grader's sampling holds it, as for a GPU probe)."""
    sandbox.check()
    saved = sandbox.budget, sandbox.limits
    sandbox.budget = dataclasses.replace(sandbox.budget, child_mb=child_mb)
    sandbox.limits = dataclasses.replace(sandbox.limits, address_space_mb=address_space_mb,
                                         timeout_s=30)
    try:
        yield
    finally:
        sandbox.budget, sandbox.limits = saved


GROW = """
    import torch
    hoard = []
    while True:  # 64 MB a step, every page written
        hoard.append(torch.ones(1 << 24))
        print(len(hoard), flush=True)
"""


def test_child_asks_the_kernel_to_kill_it_first(sandbox):
    r = run(sandbox, "print('adj', open('/proc/self/oom_score_adj').read().strip())\n")
    assert r.ok and "adj 1000" in r.output, r.output


def test_torch_allocator_failure_reads_as_out_of_memory(sandbox):
    with budget(sandbox, 200, 200):
        r = run(sandbox, GROW)
    assert r.status == "memory" and r.memory_limit_mb == 200, r.error
    assert r.error.startswith("ran out of memory (limit 200 MB)")
    assert "can't allocate memory" in r.header["message"]  # torch's own words...
    assert "allocating 64 MB failed" in r.error, r.error       # ...in a line
    assert int(r.output.split()[-1]) <= 200 // 64  # it never held more than the budget


def test_sampling_stops_what_the_address_space_limit_does_not_hold(sandbox):
    with budget(sandbox, 200, 0):
        r = run(sandbox, GROW)
    assert r.status == "memory", (r.status, r.error)
    assert r.error.startswith("ran out of memory (limit 200 MB): it was stopped at")
    # Stopped within a few steps past the budget (one 20 ms sample apart on a busy machine).
    assert 200 < r.peak_mb < 200 + 5 * 64, r.peak_mb


def test_a_child_killed_near_its_budget_reads_as_out_of_memory(sandbox):
    # What the kernel's OOM killer does (SIGKILL, no traceback), done by the child itself once it
    # holds 192 of its 200 MB.
    with budget(sandbox, 200, 0):
        r = run(sandbox, """
            import os, signal, time, torch
            hoard = [torch.ones(1 << 24) for _ in range(3)]
            time.sleep(0.5)  # let the grader's sampling see it
            os.kill(os.getpid(), signal.SIGKILL)
        """)
    assert r.status == "memory", (r.status, r.error)
    assert r.error.startswith("ran out of memory (limit 200 MB): it was killed at")


def test_megabytes_of_output_are_capped(sandbox):
    r = run(sandbox, "import sys\nfor _ in range(2000):\n    print('x' * 10000)\n"
                     "sys.stdout.flush()\nprint('survived')\n")
    assert len(r.output) < 5000 and "truncated" in r.output
    assert r.seconds < 4


def test_child_processes_are_killed_even_after_escaping_the_group(sandbox, tmp_path):
    r = run(sandbox, """
        import os, time
        for escape in (False, True):
            pid = os.fork()
            if pid == 0:
                if escape:
                    os.setsid()
                time.sleep(600)
                os._exit(0)
            print("child", pid)
        import sys; sys.stdout.flush()
        time.sleep(600)
    """, timeout_s=1.5)
    assert r.status == "timeout"
    pids = [int(line.split()[1]) for line in r.output.splitlines() if line.startswith("child")]
    assert len(pids) == 2
    time.sleep(0.2)
    for pid in pids:
        state = Path(f"/proc/{pid}/stat")
        assert not state.exists() or state.read_text().split(")")[1].split()[0] == "Z", pid


def test_a_submission_that_kills_the_worker_does_not_break_the_next_probe(sandbox):
    r = run(sandbox, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
                     "os.kill(os.getpid(), signal.SIGKILL)\n")
    assert not r.ok and r.status == "crashed"
    r = run(sandbox, "print('fine')\n")
    assert r.ok and "fine" in r.output
