"""The engine end to end on real submissions: full marks, stub, reports, grade-all, rubric."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib

from autograder.gradebook import grade_all
from autograder.report import validate_results
from autograder.runtime.sandbox import Limits

ROOT = Path(__file__).resolve().parent.parent
# All graded parts together (parts 1 and 2 are 100 points each; the lab adds its own rubric).
_RUBRICS = [tomllib.loads((ROOT / f"tests_hidden/{p}/rubric.toml").read_text())["test"]
            for p in ("diffusion", "binary_diffusion", "lab")]
TOTAL = sum(t["points"] for r in _RUBRICS for t in r)
N_TESTS = sum(len(r) for r in _RUBRICS)
FUNCTIONS = ("Diffusion.__init__", "q_sample", "q_posterior", "p_loss", "forward", "p_sample",
             "p_sample_loop", "sample", "integration")


@pytest.fixture(scope="session")
def graded(tmp_path_factory):
    """grade-all over {reference, release stub}: one zygote grades both (session-wide: the
    Gradescope test compares its own run with this one for determinism)."""
    subs = tmp_path_factory.mktemp("subs")
    (subs / "reference").mkdir()
    shutil.copy(ROOT / "solutions" / "diffusion.py", subs / "reference" / "diffusion.py")
    shutil.copy(ROOT / "solutions" / "binary_diffusion.py", subs / "reference" / "binary_diffusion.py")
    shutil.copy(ROOT / "solutions" / "lab.ipynb", subs / "reference" / "lab.ipynb")
    (subs / "stub").mkdir()
    shutil.copy(ROOT / "assignment" / "diffusion.py", subs / "stub" / "diffusion (1).py")
    shutil.copy(ROOT / "assignment" / "binary_diffusion.py", subs / "stub" / "binary_diffusion.py")
    shutil.copy(ROOT / "assignment" / "lab.ipynb", subs / "stub" / "lab.ipynb")
    out = tmp_path_factory.mktemp("out")
    summary = grade_all(subs, out, jobs=1, limits=Limits())
    return out, summary


def load(out, name):
    return json.loads((out / name / "results.json").read_text())


@pytest.mark.slow
def test_reference_solution_gets_full_marks(graded):
    results = load(graded[0], "reference")
    validate_results(results)
    failing = [t["name"] + ": " + t["output"] for t in results["tests"] if t["status"] != "passed"]
    assert not failing
    assert results["score"] == sum(t["max_score"] for t in results["tests"]) == TOTAL
    assert "Part 2: binary diffusion (binary_diffusion.py): 100 / 100" in results["output"]


@pytest.mark.slow
def test_release_stub_scores_zero_and_says_not_implemented(graded):
    results = load(graded[0], "stub")
    validate_results(results)
    assert results["score"] == 0
    assert all("not implemented" in t["output"] for t in results["tests"])
    assert "diffusion (1).py" in results["output"]  # the renamed copy was graded, with a note


@pytest.mark.slow
def test_report_breaks_the_score_down_per_function_and_explains_failures(graded):
    text = (graded[0] / "stub" / "report.md").read_text()
    assert f"**Score: 0 / {TOTAL:g}**" in text
    assert "### Part 2: binary diffusion (binary_diffusion.py): 0 / 100" in text
    for fn in FUNCTIONS:
        assert f"| {fn} | 0 |" in text
    assert "not implemented" in text and f"## Failing tests ({N_TESTS})" in text


@pytest.mark.slow
def test_grade_all_writes_a_gradebook_and_a_summary(graded):
    out, summary = graded
    rows = {r["submission"]: r for r in csv.DictReader(open(out / "gradebook.csv"))}
    assert {name: float(r["score"]) for name, r in rows.items()} == {"reference": TOTAL, "stub": 0.0}
    assert float(rows["reference"]["grading_time_s"]) > 0 and rows["reference"]["notes"] == ""
    assert "renamed: no diffusion.py found; graded diffusion (1).py instead" in rows["stub"]["notes"]
    assert "Score histogram" in summary and "Most-failed tests" in summary
    needs = summary.split("## Needs attention (1)")[1].split("##")[0]
    assert "- stub: score 0; renamed file" in needs and "untouched" in needs
    assert "reference" not in needs
    # The untouched stub's "not implemented" failures say nothing about hard tests.
    assert summary.split("## Most-failed tests")[1].strip().endswith("(none)")
    assert (out / "summary.md").read_text() == summary


@pytest.mark.slow
def test_results_and_report_name_the_submission_and_what_to_fix_first(graded):
    results = load(graded[0], "stub")
    assert results["output"].splitlines()[:4] == [
        "Part 1: Gaussian DDPM (diffusion.py): 0 / 100",
        "Part 2: binary diffusion (binary_diffusion.py): 0 / 100",
        "Part 3: the notebook lab (lab.ipynb): 0 / 24",
        "Fix first: Diffusion.__init__: cosine-schedule buffers match eq. (1)-(3) for T = 1, 2, "
        "50, 1000: " + results["tests"][0]["output"].splitlines()[0]]
    assert load(graded[0], "reference")["output"].splitlines()[:4] == [
        "Part 1: Gaussian DDPM (diffusion.py): 100 / 100",
        "Part 2: binary diffusion (binary_diffusion.py): 100 / 100",
        "Part 3: the notebook lab (lab.ipynb): 24 / 24", "All tests passed."]
    report_md = (graded[0] / "stub" / "report.md").read_text()
    assert report_md.startswith("# Autograder report: stub\n")
    assert str(graded[0]) not in report_md and "**Fix first:** Diffusion.__init__" in report_md


def test_fix_first_names_the_first_failing_visible_test_only():
    from autograder.report import summary_output

    tests = [{"name": "a: x", "score": 0.0, "max_score": 2.0, "status": "failed",
              "output": "secret", "visibility": "hidden"},
             {"name": "b: y", "score": 0.0, "max_score": 3.0, "status": "failed",
              "output": "\nb is wrong\nmore", "visibility": "visible"}]
    text = summary_output([("Part 1", tests)], ["a note"])
    assert text == "Part 1: 0 / 5\nFix first: b: y: b is wrong\nNote: a note"
    tests[1]["visibility"] = "after_due_date"
    assert "secret" not in summary_output([("Part 1", tests)])


@pytest.mark.slow
def test_grade_all_shows_progress_and_flags_timeouts_and_broken_files(tmp_path):
    """A submission that hangs and one that does not import: both are named while they are
    graded and listed under "needs attention" with why."""
    import io

    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "hangs.py").write_text("while True:\n    pass\n")
    (subs / "broken.py").write_text("def q_sample(:\n")
    out, stream = tmp_path / "out", io.StringIO()
    summary = grade_all(subs, out, jobs=1, limits=Limits(timeout_s=2), progress_stream=stream)
    progress = stream.getvalue().splitlines()
    assert progress[0].startswith(f"[1/2] broken.py: 0 / {TOTAL:g} in "), progress
    assert progress[-1].startswith(f"[2/2] hangs.py: 0 / {TOTAL:g} in "), progress
    rows = {r["submission"]: r for r in csv.DictReader(open(out / "gradebook.csv"))}
    assert "timeout: importing diffusion.py: did not finish within 2 s" in rows["hangs.py"]["notes"]
    assert "import error: SyntaxError" in rows["broken.py"]["notes"]
    needs = summary.split("## Needs attention (2)")[1].split("##")[0]
    assert "- broken.py: score 0; renamed file: graded broken.py as diffusion.py; does not import: SyntaxError" in needs
    assert "- hangs.py: score 0; renamed file: graded hangs.py as diffusion.py; timeout: importing" in needs


def test_make_grade_all_without_submissions_says_to_set_it():
    proc = subprocess.run(["make", "-s", "grade-all", "SUBMISSIONS="], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "make grade-all needs SUBMISSIONS=folder" in proc.stderr


def test_rubric_gives_every_test_points_visibility_and_a_function_prefix():
    with open(ROOT / "tests_hidden" / "diffusion" / "rubric.toml", "rb") as f:
        tests = tomllib.load(f)["test"]
    from autograder.config import GRADED_MODULES
    from autograder.grade import load_tests

    implemented = load_tests(GRADED_MODULES[0])
    assert sum(t["points"] for t in tests) == 100
    assert {t["id"] for t in tests} == set(implemented)
    for t in tests:
        assert t["name"].split(": ", 1)[0] in FUNCTIONS, t["name"]
        assert t["visibility"] in ("hidden", "after_due_date", "after_published", "visible")
    assert len({t["name"] for t in tests}) == len(tests)


@pytest.mark.slow
def test_a_missing_part_costs_only_that_part(tmp_path):
    from autograder.grade import grade_submission

    (tmp_path / "only_binary").mkdir()
    shutil.copy(ROOT / "solutions" / "binary_diffusion.py", tmp_path / "only_binary")
    results = grade_submission(tmp_path / "only_binary")
    part1 = [t for t in results["tests"] if "no diffusion.py" in t["output"]]
    assert results["score"] == 100 and len(part1) == 26  # part 2's points only
    assert all(t["score"] == 0 and t["output"].startswith("not graded") for t in part1)
    assert "no diffusion.py in the submission" in results["output"]


def test_a_lone_file_stands_for_the_part_its_name_says():
    from autograder.grade import find_submission, lone_file_part

    names = ["diffusion.py", "binary_diffusion.py"]
    assert lone_file_part("x/binary_diffusion (2).py", names) == "binary_diffusion.py"
    assert lone_file_part("x/diffusion-1.py", names) == "diffusion.py"
    assert lone_file_part("x/my_solution.py", names) == "diffusion.py"  # any other name: part 1
    this = Path(__file__)
    assert find_submission(this, "binary_diffusion.py", owner="diffusion.py")[0] is None
    assert find_submission(this, "diffusion.py", owner="diffusion.py")[0] == this


def test_otter_results_option_is_gone():
    """Notebooks are graded by the engine now (tests_hidden/lab/); the old --otter-results merge,
    which crashed on Otter's score-less "Public Tests" entry, was removed rather than kept."""
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", "x", "--out", "y",
                           "--otter-results", "o.json"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "--otter-results" in proc.stderr


def test_zero_score_results_exist_before_grading_starts(tmp_path):
    """Kill the grader mid-run: the results.json already there is valid and scores 0."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "autograder", "grade",
                             str(ROOT / "solutions"), "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / "results.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    results = json.loads((out / "results.json").read_text())
    validate_results(results)
    assert results["score"] == 0 and len(results["tests"]) == N_TESTS
    assert all(t["status"] == "failed" for t in results["tests"])


def test_cli_names_a_missing_submission_on_the_terminal_and_still_writes_results(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "autograder", "grade", str(tmp_path / "typo"),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"score 0 / {TOTAL:g}" in proc.stdout and "typo does not exist" in proc.stdout
    validate_results(json.loads((out / "results.json").read_text()))


# ----------------------------------------------------------------------------- bounded time

@pytest.mark.slow
def test_a_submission_that_hangs_everywhere_is_graded_in_bounded_time(tmp_path):
    """Each function times out once; its later tests fail at once ("timed out earlier"); after
    the first timeout, probes share a pool (limits scaled down here, the same rule as the
    defaults: 10 s per probe, a 30 s pool, 5 s after it, about a minute in all)."""
    from submissions.hostile_cases import HOSTILE

    from autograder.config import GRADED_MODULES
    from autograder.grade import grade_submission

    case = next(h for h in HOSTILE if "hang" in h.checks)
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "diffusion.py").write_text(case.source())
    limits = Limits(timeout_s=2.0, hang_pool_s=4.0, after_hangs_timeout_s=1.0)
    start = time.monotonic()
    part1 = tuple(m for m in GRADED_MODULES if m.name == "diffusion")  # a diffusion.py only
    results = grade_submission(sub, tmp_path / "out", limits=limits, modules=part1)
    elapsed = time.monotonic() - start
    validate_results(results)
    assert results["score"] == 0
    by_function = {}
    for t in results["tests"]:
        by_function.setdefault(t["name"].split(":", 1)[0], []).append(t["output"])
    assert set(by_function) == set(FUNCTIONS)
    for function, outputs in by_function.items():
        first, *later = outputs
        assert "timed out: did not finish within" in first, (function, first)
        assert all("timed out earlier" in o and "not called again" in o for o in later), later
    # Probe time: two full timeouts fill the pool, then 1 s for each of the 7 other functions;
    # the rest is starting the sandbox and the grader's own work (generous on a loaded machine).
    bound = limits.hang_pool_s + limits.timeout_s + 7 * limits.after_hangs_timeout_s
    assert elapsed < bound + 40, f"{elapsed:.0f} s for a submission that hangs everywhere"


# ----------------------------------------------------------------------------- environment

def _env_without_numpy_for_the_worker(tmp_path):
    """A real environment fault: a bare venv whose torch and numpy come from PYTHONPATH. The
    grader imports them; the worker (python -I, clean environment) cannot."""
    venv = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    site = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "torch").is_dir())
    env = dict(os.environ, PYTHONPATH=site)
    return venv / "bin" / "python", env


def test_a_worker_that_cannot_import_numpy_is_a_grader_environment_error(tmp_path):
    python, env = _env_without_numpy_for_the_worker(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.run([str(python), "-m", "autograder", "grade", str(ROOT / "solutions"),
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "grader environment error" in proc.stderr and "numpy" in proc.stderr
    assert "import numpy, torch" in proc.stderr  # what to try, to fix it
    assert not (out / "results.json").exists() and "score" not in proc.stdout
    proc = subprocess.run([str(python), "-m", "autograder", "grade-all", str(ROOT / "solutions"),
                           "--out", str(tmp_path / "all")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "grader environment error" in proc.stderr
    assert not (tmp_path / "all" / "gradebook.csv").exists()


@pytest.mark.slow
def test_a_python_prefix_behind_a_symbolic_link_grades(tmp_path):
    """The sandbox binds real paths back into its namespace; a venv reached through a link
    (a home folder that is a link, a checkout's .venv) must still work there."""
    link = tmp_path / "linked-venv"
    link.symlink_to(Path(sys.prefix).resolve(), target_is_directory=True)
    python = link / "bin" / Path(sys.executable).name
    out = tmp_path / "out"
    proc = subprocess.run([str(python), "-m", "autograder", "grade",
                           str(ROOT / "assignment"), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads((out / "results.json").read_text())
    # The stubs (diffusion.py and lab.ipynb): every probe ran in the worker and came back "not
    # implemented" (not a crash).
    # part 2's tests say its file is missing.
    graded = [t for t in results["tests"] if "no binary_diffusion.py" not in t["output"]]
    assert all("not implemented" in t["output"] for t in graded), results["output"]


def test_release_gate_rejects_stubs_that_score_0_for_another_reason_than_not_implemented(tmp_path):
    """A zero that does not say "not implemented" (here: a file that does not import, as a broken
    sandbox would give) fails the stubs gate: it would hide a grader that grades everyone 0."""
    from release.gates import check_stubs_grader

    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / "diffusion.py").write_text("def broken(:\n")
    problems, summary = check_stubs_grader(ROOT, kit, tmp_path / "scratch")
    assert problems and all("does not say 'not implemented'" in p for p in problems), problems
    assert summary.endswith("0 say 'not implemented'")
