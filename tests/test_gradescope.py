"""Gradescope packaging: the zip's file list, run_autograder end to end, the results schema."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from test_autograder import graded  # noqa: F401  (session fixture: the same grading, in-process)

from autograder.package import FILES
from autograder.report import validate_results

ROOT = Path(__file__).resolve().parent.parent


def test_zip_list_has_the_gradescope_scripts_at_the_root_and_existing_sources():
    targets = set(FILES.values())
    assert {"setup.sh", "run_autograder"} <= targets
    assert {"tests_hidden/diffusion/rubric.toml", "tests_hidden/diffusion/probes.py", "solutions/unet.py", "autograder/runtime/worker.py",
            "tests_hidden/lab/tests.py", "solutions/lab.ipynb", "autograder/notebook.py"} <= targets
    for source in FILES:
        assert (ROOT / source).is_file(), source
    assert all(not t.startswith(("tests/", "assignment/")) for t in targets)


@pytest.mark.slow
def test_run_autograder_grades_a_submission_under_a_simulated_autograder_root(tmp_path, graded):  # noqa: F811
    root = tmp_path / "autograder"
    for source, target in FILES.items():
        (root / "source" / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / source, root / "source" / target)
    (root / "submission").mkdir(parents=True)
    shutil.copy(ROOT / "solutions" / "diffusion.py", root / "submission" / "diffusion.py")
    shutil.copy(ROOT / "solutions" / "binary_diffusion.py", root / "submission")
    shutil.copy(ROOT / "solutions" / "lab.ipynb", root / "submission" / "lab.ipynb")
    env = dict(os.environ, AUTOGRADER_ROOT=str(root), AUTOGRADER_PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(root / "source" / "run_autograder")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((root / "results" / "results.json").read_text())
    validate_results(results)
    assert results["score"] == sum(t["max_score"] for t in results["tests"]) >= 100, [
        t["output"] for t in results["tests"] if t["score"] == 0]
    assert stat.S_IMODE((root / "results").stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "source").stat().st_mode) == 0o700
    # Deterministic: the same submission graded in another process (grade-all, in-process,
    # another zygote) gives the same verdicts and messages.
    second = json.loads((graded[0] / "reference" / "results.json").read_text())
    strip = [{k: t[k] for k in ("name", "score", "status", "output")} for t in results["tests"]]
    assert strip == [{k: t[k] for k in ("name", "score", "status", "output")}
                     for t in second["tests"]]


@pytest.mark.parametrize("bad", [
    {"score": "100", "tests": []},
    {"tests": [{"name": "q_sample: x", "score": 1, "status": "ok"}]},
    {"tests": [{"name": "q_sample: x", "score": 1, "visibility": "students"}]},
    {"tests": [{"score": 1}]},
    {"tests": [{"name": "x", "score": 1, "points": 3}]},
    [],
])
def test_results_schema_check_rejects_malformed_results(bad):
    with pytest.raises(ValueError):
        validate_results(bad)


def test_run_autograder_reports_an_environment_fault_as_a_failure_not_a_zero(tmp_path):
    """The worker cannot import numpy (torch and numpy on PYTHONPATH only): run_autograder
    leaves no results.json, so Gradescope shows "The autograder failed to execute correctly"
    (staff see it; the student is told to contact them) instead of recording a 0."""
    root = tmp_path / "autograder"
    for source, target in FILES.items():
        (root / "source" / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / source, root / "source" / target)
    (root / "submission").mkdir(parents=True)
    shutil.copy(ROOT / "solutions" / "diffusion.py", root / "submission" / "diffusion.py")
    venv = tmp_path / "bare-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    site = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "torch").is_dir())
    env = dict(os.environ, AUTOGRADER_ROOT=str(root), AUTOGRADER_PYTHON=str(venv / "bin" / "python"),
               PYTHONPATH=site)
    proc = subprocess.run(["bash", str(root / "source" / "run_autograder")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert not (root / "results" / "results.json").exists()
    log = proc.stdout + proc.stderr
    assert "grader environment error" in log and "contact the course staff" in log
