"""Part 3, the notebook lab: the notebook -> module conversion, the Otter release, and the grading
catalogue of tests/submissions/lab_cases.py graded with the real engine (sandbox and all).

Fast: the converter, the rubric against the master's Otter questions, the release gate, the
committed student notebook against a fresh `otter assign`. Slow (marked): grading (the reference,
the released blank notebook, an alternate, the Otter-style forgery, endless cells and functions,
21 mutants) and running the student notebook headless plus its HTML export.
"""

import dataclasses
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from submissions import lab_cases as cases

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from autograder.config import GRADED_MODULES  # noqa: E402
from autograder.grade import default_hide, grade_submission, load_rubric  # noqa: E402
from autograder.notebook import NotebookError, notebook_to_module  # noqa: E402
from autograder.runtime.sandbox import Limits, Sandbox  # noqa: E402
from release import lab as release_lab  # noqa: E402

LAB = tuple(m for m in GRADED_MODULES if m.name == "lab")
RUBRIC = load_rubric(LAB[0])
FULL = sum(t["points"] for t in RUBRIC)


def nb_of(*cells):
    return json.dumps({"cells": [{"cell_type": "code", "source": c, "metadata": {},
                                  "outputs": []} for c in cells],
                       "metadata": {}, "nbformat": 4, "nbformat_minor": 5}).encode()


# ----------------------------------------------------------------------------- the converter

def run_module(source, tmp_path):
    """Import the converted module in a subprocess (a kept endless loop would hang it: 20 s)."""
    path = tmp_path / "lab.py"
    path.write_text(source)
    code = ("import importlib.util, json; s = importlib.util.spec_from_file_location('lab', "
            f"{str(path)!r}); m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
            "print(json.dumps(sorted(n for n in vars(m) if not n.startswith('__'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout))


def test_converter_keeps_imports_and_definitions_only(tmp_path):
    source, notes = notebook_to_module(nb_of(
        "import math\nimport matplotlib.pyplot as plt\nfrom tqdm.auto import tqdm\nT = 5\n",
        "%matplotlib inline\n!pip install nothing\ndef f(x, n=T):\n    return math.sqrt(x) + n\n",
        "while True:\n    pass\n",
        "open('/tmp/lab-converter-side-effect', 'w').write('ran')\nresult = f(4)\nplt.plot([1])\n",
        "class Model:\n    scale = 2\n\n@staticmethod\ndef g():\n    return 1\n",
        "grader.check('q1')\n"))
    assert notes == []
    assert "while True" not in source and "open(" not in source and "grader.check" not in source
    assert "matplotlib" not in source and "from tqdm import tqdm" in source
    names = run_module(source, tmp_path)
    assert {"math", "tqdm", "T", "f", "Model", "g"} <= names
    assert not names & {"plt", "result"}
    assert not Path("/tmp/lab-converter-side-effect").exists()


def test_converter_survives_syntax_errors_cell_magics_and_broken_definitions(tmp_path):
    source, notes = notebook_to_module(nb_of(
        "def ok():\n    return 1\n",
        "def broken(:\n",
        "%%bash\necho hi\n",
        "%%time\ndef timed():\n    return 2\n",
        "import a_module_that_does_not_exist\nfrom unet import Unet\n",
        "SIDE, N = 6, 7\ndef uses_global(d=UNDEFINED_GLOBAL):\n    return d\n",
        "def later(d=SIDE * N):\n    return d\n"))
    assert len(notes) == 1 and "cell 2 has a syntax error" in notes[0]
    names = run_module(source, tmp_path)
    assert {"ok", "timed", "later", "SIDE", "N"} <= names
    assert "uses_global" not in names  # its default fails: only this definition is lost


def test_converter_rejects_what_is_not_a_notebook():
    for data in (b"def f(): pass", b"[1, 2]", b"{\"cells\": 3}"):
        with pytest.raises(NotebookError, match="not a Jupyter notebook"):
            notebook_to_module(data)


# ----------------------------------------------------------------------------- rubric and release

def otter_questions(nb):
    """{name: (points, manual)} from the master's BEGIN QUESTION raw cells."""
    out = {}
    for cell in nb["cells"]:
        text = cases.source(cell)
        if cell["cell_type"] == "raw" and text.startswith("# BEGIN QUESTION"):
            conf = dict(line.split(": ", 1) for line in text.splitlines()[1:])
            out[conf["name"]] = (float(conf["points"]), conf.get("manual") == "true")
    return out


def test_rubric_points_are_the_otter_questions_points():
    questions = otter_questions(cases.load())
    auto = {q: p for q, (p, manual) in questions.items() if not manual}
    per_question = {}
    for t in RUBRIC:
        q = t["name"].split(".", 1)[0]
        per_question[q] = per_question.get(q, 0) + t["points"]
        assert t["id"].startswith(q + "_"), t
    assert per_question == auto
    assert {q for q, (_, manual) in questions.items() if manual} == {f"w{i}" for i in range(1, 7)}


def test_every_graded_function_has_a_test():
    graded = set(release_lab._defs(cases.load())) - {"_abar", "to_tensor", "show", "best_time",
                                                      "run_reverse", "eps_model", "mnist_reference",
                                                      "fid_score"}
    graded = {f for f in graded if not f.startswith("test_")}
    named = {t["name"].split(":", 1)[0].split(".", 1)[1] for t in RUBRIC}
    assert graded == named


def test_committed_student_notebook_is_what_otter_assign_makes_and_passes_the_gate():
    fresh = release_lab.assign(cases.MASTER)
    assert fresh == cases.STUDENT.read_bytes(), "assignment/lab.ipynb is stale: run make release"
    assert release_lab.check_notebook(cases.MASTER.read_bytes(), fresh) == []
    student = json.loads(fresh)
    checks = [cases.source(c) for c in student["cells"]
              if c["cell_type"] == "code" and "grader.check(" in cases.source(c)]
    assert checks == [f'grader.check("q{i}")' for i in range(1, 10)]


def test_gate_catches_a_solution_or_hidden_test_in_the_student_notebook():
    master = cases.MASTER.read_bytes()
    # the master itself, as if Otter had not stripped it (a solution cell outside a solution block)
    problems = release_lab.check_notebook(master, master)
    assert any("solution line reaches students" in p and "math.sqrt(1.0 - float(beta_t))" in p
               for p in problems)
    assert any("Otter marker" in p for p in problems)
    student = json.loads(cases.STUDENT.read_bytes())
    tests = student["metadata"]["otter"]["tests"]
    tests["q1"] = tests["q1"].replace("hidden=False", "hidden=True", 1)
    problems = release_lab.check_notebook(master, json.dumps(student).encode())
    assert problems == ["lab.ipynb: the tests of q1 in the notebook's metadata include a hidden "
                        "test (mark every test in the master `hidden: false`; hidden tests live "
                        "in tests_hidden/)"]


# ----------------------------------------------------------------------------- grading

@pytest.fixture(scope="module")
def grade(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lab-graded")
    folder.chmod(0o700)
    with Sandbox(hide=default_hide(), limits=Limits(timeout_s=5.0)) as sandbox:
        def run(name, nb, tests=None, budget_s=120.0):
            path = cases.write(nb, folder / f"{name}.ipynb")
            modules = LAB
            if tests is not None:  # only these tests: a rubric file restricted to them
                rubric = folder / f"{name}.toml"
                rubric.write_text("".join(
                    f"[[test]]\nid = {json.dumps(t['id'])}\nname = {json.dumps(t['name'])}\n"
                    f"points = {t['points']}\nvisibility = \"visible\"\n\n"
                    for t in RUBRIC if t["id"] in tests))
                modules = (dataclasses.replace(LAB[0], rubric=str(rubric)),)
            start = time.monotonic()
            results = grade_submission(path, sandbox=sandbox, modules=modules, budget_s=budget_s)
            return results, time.monotonic() - start
        yield run


def failing(results):
    return {t["name"]: t["output"] for t in results["tests"] if t["status"] != "passed"}


def test_reference_notebook_gets_full_marks(grade):
    results, _ = grade("reference", cases.load())
    assert results["score"] == FULL, failing(results)
    assert [t["name"] for t in results["tests"]] == [t["name"] for t in RUBRIC]


@pytest.mark.slow
def test_alternate_correct_notebook_gets_full_marks(grade):
    results, _ = grade("alternate", cases.with_cell(cases.load(), cases.ALTERNATE))
    assert results["score"] == FULL, failing(results)


@pytest.mark.slow
def test_released_student_notebook_scores_0_and_says_not_implemented(grade):
    results, _ = grade("student", cases.load(cases.STUDENT))
    assert results["score"] == 0
    bad = {n: o for n, o in failing(results).items() if "not implemented" not in o}
    assert len(failing(results)) == len(RUBRIC) and not bad, bad


@pytest.mark.slow
def test_otter_style_forgery_scores_0(grade):
    results, _ = grade("forgery", cases.with_cell(cases.load(cases.STUDENT), cases.FORGERY, 1))
    assert results["score"] == 0
    assert all("not implemented" in o for o in failing(results).values())


@pytest.mark.slow
def test_a_cell_that_never_ends_scores_0_quickly(grade):
    results, seconds = grade("loop-cell", cases.with_cell(cases.load(cases.STUDENT),
                                                          cases.LOOP_CELL, 1))
    assert results["score"] == 0 and seconds < 60  # the cell never runs: no probe waits for it


@pytest.mark.slow
def test_a_function_that_never_returns_fails_only_its_own_test_within_the_bound(grade):
    q1 = [t["id"] for t in RUBRIC if t["id"].startswith("q1_")]
    results, seconds = grade("loop-function", cases.mutate(cases.load(), cases.LOOP_FUNCTION),
                             tests=q1, budget_s=60.0)
    bad = failing(results)
    assert list(bad) == [t["name"] for t in RUBRIC if t["id"] == "q1_compute_mean"]
    assert "timed out" in next(iter(bad.values()))
    assert seconds < 60 + 20


@pytest.mark.slow
@pytest.mark.parametrize("mutant", cases.MUTANTS, ids=[m.name for m in cases.MUTANTS])
def test_mutant_loses_points_exactly_in_its_own_tests(grade, mutant):
    tests = [t["id"] for t in RUBRIC if t["id"].split("_", 1)[0] in mutant.questions()]
    results, _ = grade(f"mutant-{mutant.name}", cases.mutate(cases.load(), mutant), tests=tests)
    lost = sorted(t_id for t_id, t in zip(tests, results["tests"], strict=True)
                  if t["status"] != "passed")
    assert lost == sorted(mutant.loses), failing(results)
    for t in results["tests"]:  # feedback names the function
        if t["status"] != "passed":
            fn = t["name"].split(":", 1)[0].split(".", 1)[1]
            assert t["output"].startswith(fn), t["output"]


def test_catalogue_size():
    assert len(cases.MUTANTS) >= 10 and len({m.name for m in cases.MUTANTS}) == len(cases.MUTANTS)
    assert {q for m in cases.MUTANTS for q in m.questions()} >= {f"q{i}" for i in range(1, 10)}


# ----------------------------------------------------------------------------- the student's side

def reduced_student_notebook(answers):
    """The released notebook cut to its Otter cells, imports and answer cells (the experiments
    are skipped: they train for minutes); with answers=True the answer cells hold the solutions."""
    student = json.loads(cases.STUDENT.read_bytes())
    master_defs = {}
    if answers:
        for cell in cases.load()["cells"]:
            text = cases.source(cell)
            if cell["cell_type"] == "code" and "# BEGIN SOLUTION" in text:
                master_defs[re.search(r"def (\w+)\(", text).group(1)] = text
    keep = []
    for cell in student["cells"]:
        text = cases.source(cell)
        tags = cell.get("metadata", {}).get("tags", [])
        if cell["cell_type"] == "markdown":
            keep.append(cell)
        elif "otter" in text or "grader.check" in text or text.startswith("import math"):
            keep.append(cell)
        elif "otter_answer_cell" in tags:
            if answers:
                cell = dict(cell, source=master_defs[re.search(r"def (\w+)\(", text).group(1)])
            keep.append(cell)
    student["cells"] = keep
    return student


@pytest.mark.slow
@pytest.mark.parametrize("answers", [False, True], ids=["blank", "answered"])
def test_student_notebook_runs_headless_and_checks_in_its_kernel(tmp_path, answers):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.from_dict(reduced_student_notebook(answers))
    path = tmp_path / "lab.ipynb"  # otter.Notebook("lab.ipynb") reads its tests from this file
    nbformat.write(nb, path)
    NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=not answers,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = {}
    for cell in nb.cells:
        m = re.match(r'grader\.check\("(q\d)"\)', cell.source)
        if m:
            outputs[m.group(1)] = json.dumps(cell.outputs)
    assert sorted(outputs) == [f"q{i}" for i in range(1, 10)]
    for q, text in outputs.items():
        if answers:
            assert "passed" in text and "failed" not in text.lower(), (q, text[:500])
        else:
            assert "not implemented" in text, (q, text[:500])
    if answers:  # the one-command export for the written part, offline
        nbformat.write(nb, path)
        proc = subprocess.run([sys.executable, "-m", "nbconvert", "--to", "html", str(path)],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        html = (tmp_path / "lab.html").read_text()
        assert "Question w1" in html and "compute_mean" in html and "q9" in html and "passed" in html
