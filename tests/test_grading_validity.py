"""The autograder is valid: it gives full marks to correct code, takes points from every catalogued
bug in a test named after it, and gives no undeserved points to hostile submissions.

Graded with the engine's in-process API (autograder.grade.grade_submission):
- the reference (twice: grading is deterministic) and every correct implementation
  (tests/submissions/correct_forms.py and correct/), each graded twice: full marks;
- the release stub: 0 on every test, each saying "not implemented";
- each mutant of tests/submissions/mutants.py (one bug in one function), graded with the whole
  rubric but the integration tests: it loses points in a test of its function and in no test of
  another function ("one bug, one place"); its messages say what it returned where that is the
  bug; and every test's margin (tests/margins.py) is at least 10;
- the rubric: integration tests are named "integration: ..." and carry at most 10 % of the points;
- each hostile case (tests/submissions/hostile_cases.py): a valid results.json, no
  undeserved points, a message, within the time budget, in a fresh sandbox with its own out dir,
  as `python -m autograder grade` does. Those that implement nothing face every test; copies of
  the reference that misbehave in some functions face the tests of the functions they name.
"""

import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from margins import MIN_MARGIN, Catalogue, correct_sources, grade_all, margins, without_integration
from margins import table as table_of_margins
from submissions.hostile_cases import HOSTILE
from submissions.mutants import MUTANTS, mutant_source
from submissions.stubs import stub_source

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from autograder.config import GRADED_MODULES  # noqa: E402
from autograder.grade import default_hide, grade_submission, load_rubric  # noqa: E402
from autograder.runtime.sandbox import Limits, Sandbox  # noqa: E402

pytestmark = pytest.mark.slow

CORRECT = correct_sources()
# This catalogue is about part 1 (diffusion.py); part 2 has tests/test_grading_validity_binary.py,
# the lab its own (tests/test_lab.py).
PART1 = tuple(m for m in GRADED_MODULES if m.name == "diffusion")
FULL_RUBRIC = [t for m in PART1 for t in load_rubric(m)]
FULL_MARKS = sum(float(t["points"]) for t in FULL_RUBRIC)

# Hostile submissions run with a short per-probe limit and grading budget so that the suite stays
# fast; the engine enforces them exactly as it does its defaults (Limits().timeout_s and
# DEFAULT_BUDGET_S). GRACE covers what the budget does not: starting the sandbox (importing torch
# in the zygote and checking it: up to ~30 s on a loaded 2-core machine), tearing it down, writing
# the files. The budget starts once the sandbox is ready.
HOSTILE_LIMITS = Limits(timeout_s=3.0, max_probe_memory_mb=256)
HOSTILE_BUDGET_S = 15.0
GRACE_S = 40.0
ORPHAN_TOKEN = "ddpm-hostile-orphan-5f1c"  # in hostile/orphan_processes.py
FAKE_MARKERS = ("FAKE-RESULTS-ddpm-hostile", ORPHAN_TOKEN)  # in what the hostile files forge
# Where a forged results.json would matter: Gradescope's path and the grader's own tree. (Other
# processes may legitimately write there meanwhile, e.g. `make grade`; only forged content counts.)
FAKE_PATHS = [Path("/autograder/results/results.json"), ROOT / "results.json",
              ROOT / "build" / "grade" / "results.json", Path.cwd() / "results.json"]


def function_of(test):
    return test["name"].split(":", 1)[0]


def scores(results):
    return {t["name"]: (t["score"], t["max_score"]) for t in results["tests"]}


def table(results):
    return "\n".join(f"  {t['score']:g}/{t['max_score']:g}  {t['name']}\n      {t['output'][:300]!r}"
                     for t in results["tests"])


def check_schema(results, rubric=None):
    """Gradescope's results.json, checked independently of the engine's own validator."""
    assert isinstance(results.get("score"), (int, float)), "results.json: score must be a number"
    assert isinstance(results.get("tests"), list) and results["tests"], "results.json: tests[]"
    for t in results["tests"]:
        assert isinstance(t.get("name"), str) and t["name"], f"test without a name: {t}"
        assert isinstance(t.get("score"), (int, float)) and isinstance(t.get("max_score"), (int, float))
        assert 0 <= t["score"] <= t["max_score"], f"score out of range: {t}"
        assert t.get("status") in ("passed", "failed"), f"bad status: {t}"
        assert isinstance(t.get("output"), str) and t["output"].strip(), f"test without output: {t}"
        assert t.get("visibility") in ("hidden", "after_due_date", "after_published", "visible")
        assert re.match(r"^[A-Za-z0-9_.]+: ", t["name"]), f"name is not '<function>: ...': {t['name']}"
    assert abs(results["score"] - sum(t["score"] for t in results["tests"])) < 1e-6
    if rubric is not None:
        assert [t["name"] for t in results["tests"]] == [t["name"] for t in rubric]
    json.dumps(results)


def rubric_only(functions, folder):
    """PART1 restricted to the tests of `functions` (a rubric file written to folder)."""
    modules, kept = [], []
    for module in PART1:
        tests = [t for t in load_rubric(module) if function_of(t) in functions]
        path = Path(folder) / f"rubric-{'-'.join(sorted(functions))}.toml"
        path.write_text("".join(
            f"[[test]]\nid = {json.dumps(t['id'])}\nname = {json.dumps(t['name'])}\n"
            f"points = {t['points']}\nvisibility = {json.dumps(t.get('visibility', 'visible'))}\n\n"
            for t in tests))
        modules.append(dataclasses.replace(module, rubric=str(path)))
        kept += tests
    return modules, kept


class Grader:
    """One shared sandbox for the well-behaved submissions; results cached per case."""

    def __init__(self, sandbox, folder):
        self.sandbox, self.folder, self.cache = sandbox, Path(folder), {}

    def stage(self, key, text):
        # A private (0700) folder: the unprivileged worker must not find reference copies here.
        d = self.folder / key
        d.mkdir(mode=0o700, exist_ok=True)
        (d / "diffusion.py").write_text(text)
        return d

    def grade(self, key, text, modules=PART1):
        if key not in self.cache:
            start = time.monotonic()
            results = grade_submission(self.stage(key, text), sandbox=self.sandbox, modules=modules)
            self.cache[key] = (results, time.monotonic() - start)
        return self.cache[key][0]


@pytest.fixture(scope="module")
def grader(tmp_path_factory):
    folder = tmp_path_factory.mktemp("graded")
    folder.chmod(0o700)
    with Sandbox(hide=default_hide()) as sandbox:
        yield Grader(sandbox, folder)


# ----------------------------------------------------------------------------- reference, stub

def test_reference_gets_full_marks(grader):
    results = grader.grade("reference", (ROOT / "solutions" / "diffusion.py").read_text())
    check_schema(results, FULL_RUBRIC)
    assert results["score"] == FULL_MARKS, f"the reference lost points:\n{table(results)}"


def test_grading_is_deterministic(grader):
    text = (ROOT / "solutions" / "diffusion.py").read_text()
    first = grader.grade("reference", text)
    second = grader.grade("reference-again", text)
    assert scores(first) == scores(second) and first["score"] == second["score"]
    assert [t["status"] for t in first["tests"]] == [t["status"] for t in second["tests"]]


def test_stub_scores_0_on_every_test_and_says_not_implemented(grader):
    results = grader.grade("stub", stub_source())
    check_schema(results, FULL_RUBRIC)
    bad = [t for t in results["tests"]
           if t["score"] != 0 or "not implemented" not in t["output"].lower()]
    assert not bad, "on the stub, every test must score 0 and say 'not implemented':\n" + "\n".join(
        f"  {t['score']:g}  {t['name']}: {t['output'][:200]!r}" for t in bad)


# ----------------------------------------------------------------------------- catalogues

@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    folder = tmp_path_factory.mktemp("catalogue")
    folder.chmod(0o700)
    with Sandbox(hide=default_hide()) as sandbox:
        cat = Catalogue(sandbox, folder)
        cat.no_integration = without_integration(folder)
        yield cat


@pytest.mark.parametrize("name", sorted(CORRECT))
def test_correct_implementation_gets_full_marks_twice(catalogue, name):
    first, _ = catalogue.grade(f"correct-{name}", CORRECT[name])
    second, _ = catalogue.grade(f"correct-{name}-again", CORRECT[name])
    for results in (first, second):
        check_schema(results, FULL_RUBRIC)
        assert results["score"] == FULL_MARKS, (
            f"{name} is correct (written differently from the reference) but lost points:\n"
            f"{table(results)}")


def test_catalogue_sizes():
    assert len(MUTANTS) >= 20 and len({m.name for m in MUTANTS}) == len(MUTANTS)
    assert len(CORRECT) >= 8 and len(HOSTILE) >= 10
    functions = {function_of(t) for t in FULL_RUBRIC}
    for m in MUTANTS:
        assert len(m.loses) == 1 and set(m.loses) <= functions, f"{m.name}: loses {m.loses}"


def test_integration_tests_are_named_and_carry_at_most_10_percent():
    integration = [t for t in FULL_RUBRIC if function_of(t) == "integration"]
    assert integration, "the rubric names its integration tests 'integration: ...'"
    assert sum(float(t["points"]) for t in integration) <= 0.1 * FULL_MARKS
    for t in integration:  # the name says which function a failure points to
        assert re.search(r"points to \w+", t["name"]), t["name"]


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_mutant_loses_points_in_its_own_function_only(catalogue, mutant):
    results, _ = catalogue.grade(f"mutant-{mutant.name}", mutant_source(mutant),
                                 catalogue.no_integration)
    check_schema(results)
    lost = [t for t in results["tests"] if t["score"] < t["max_score"]]
    (own,) = mutant.loses
    assert any(function_of(t) == own for t in lost), (
        f"mutant {mutant.name} ({mutant.why}) keeps every point of the tests of {own}:\n"
        f"{table(results)}")
    elsewhere = [t["name"] for t in lost if function_of(t) != own]
    assert not elsewhere, (f"mutant {mutant.name} (a bug in {own}) also loses points in "
                           f"{elsewhere}:\n{table(results)}")
    assert all(t["output"].strip() not in ("", "failed") for t in lost), table(results)
    if mutant.expect:
        text = "\n".join(t["output"] for t in lost)
        assert re.search(mutant.expect, text), f"no message matching /{mutant.expect}/:\n{text}"


def test_every_margin_is_at_least_10(catalogue):
    mutant_keys, correct_keys = grade_all(catalogue, catalogue.folder)
    rows = margins(catalogue, mutant_keys, correct_keys)
    report = table_of_margins(rows)
    small = {k: sorted(r["numeric"])[0] for k, r in rows.items()
             if r["numeric"] and sorted(r["numeric"])[0][0] < MIN_MARGIN}
    assert not small, f"margins below {MIN_MARGIN}: {small}\n{report}"
    close = {k: r["correct_worst"] for k, r in rows.items() if r["correct_worst"] > 1}
    assert not close, f"a correct implementation exceeds an allowance: {close}\n{report}"

# ----------------------------------------------------------------------------- hostile

def _forged(paths):
    """The paths among `paths` that hold a results.json forged by a hostile file."""
    found = []
    for p in paths:
        try:
            text = p.read_text(errors="replace")
        except OSError:
            continue
        if any(marker in text for marker in FAKE_MARKERS):
            found.append(str(p))
    return found


def _survivors():
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(ORPHAN_TOKEN in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


@pytest.mark.parametrize("case", HOSTILE, ids=[h.name for h in HOSTILE])
def test_hostile_submission_gets_no_undeserved_points(tmp_path, case):
    tmp_path.chmod(0o700)
    submission = tmp_path / "submission"
    submission.mkdir(mode=0o700)
    (submission / "diffusion.py").write_text(case.source())
    out = tmp_path / "out"
    assert not _forged(FAKE_PATHS), "a forged results.json is already there; remove it first"

    # "nothing" cases face every test; a "partial" one only the tests its verdict is about (any
    # point lost there already puts the total below full marks).
    modules, rubric = PART1, FULL_RUBRIC
    if case.deserves == "partial":
        modules, rubric = rubric_only(set(case.zero) | set(case.full), tmp_path)
    start = time.monotonic()
    results = grade_submission(submission, out_dir=out, limits=HOSTILE_LIMITS,
                               budget_s=HOSTILE_BUDGET_S, modules=modules)
    elapsed = time.monotonic() - start

    if "orphans" in case.checks:
        time.sleep(0.5)
        survivors = _survivors()
        for proc in survivors:  # ours to clean up: started by this test's submission
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        assert not survivors, f"{len(survivors)} processes of the submission outlived grading"
        time.sleep(max(0.0, 2.5 - (time.monotonic() - start - elapsed)))  # past their 1.5 s

    written = json.loads((out / "results.json").read_text())
    check_schema(written, rubric)
    assert written["score"] == results["score"] and scores(written) == scores(results), (
        "results.json in the out folder is not the grader's verdict")
    assert elapsed <= HOSTILE_BUDGET_S + GRACE_S, (
        f"grading took {elapsed:.1f} s; the budget is {HOSTILE_BUDGET_S} s (+{GRACE_S} s start-up)")

    by_function = {}
    for t in results["tests"]:
        by_function.setdefault(function_of(t), []).append(t)
    if case.deserves == "nothing":
        assert results["score"] == 0, f"{case.file} ({case.why}) got points:\n{table(results)}"
    else:
        assert results["score"] < sum(float(t["points"]) for t in rubric)
        for prefix in case.zero:
            assert by_function.get(prefix), f"no graded test of {prefix}"
            got = [t for t in by_function[prefix] if t["score"] > 0]
            assert not got, f"{case.file} ({case.why}) got points for {prefix}:\n{table(results)}"
        for prefix in case.full:
            lost = [t for t in by_function.get(prefix, []) if t["score"] < t["max_score"]]
            assert not lost, (f"{case.file}: {prefix} works but lost points (the damage was not "
                              f"contained):\n{table(results)}")

    failed_outputs = "\n".join(t["output"] for t in results["tests"] if t["score"] == 0)
    if case.expect:
        assert re.search(case.expect, failed_outputs + results.get("output", ""), re.I), (
            f"{case.file} ({case.why}): no message matching /{case.expect}/:\n{table(results)}")

    text = (out / "results.json").read_text() + (out / "report.md").read_text()
    if "no_leak" in case.checks:
        leaks = re.findall(r"LEAK:[^:\s]+", text)
        assert not leaks, f"the submission leaked files into the results: {sorted(set(leaks))}"
    if "small_output" in case.checks:
        assert len((out / "results.json").read_bytes()) < 1 << 20, "results.json over 1 MiB"
        assert len((out / "report.md").read_bytes()) < 2 << 20, "report.md over 2 MiB"
    if "fake_results" in case.checks:
        forged = _forged(FAKE_PATHS)
        assert not forged, f"the submission forged a results.json outside its sandbox: {forged}"
        for litter in _forged([Path("/tmp/results.json")]):  # harmless there; ours to clean up
            Path(litter).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- devices

@pytest.mark.parametrize("device", ["meta", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_device_probe_catches_a_plain_cpu_attribute(catalogue, device):
    """A CPU-only grader probes on the meta device, a GPU grader on CUDA; both catch a plain
    (unregistered) tensor attribute, which .to(device) leaves on the CPU, and say so."""
    (mutant,) = [m for m in MUTANTS if m.name == "p_sample_plain_cpu_attribute"]
    folder = catalogue.folder / f"device-{device}"
    folder.mkdir(mode=0o700)
    (folder / "diffusion.py").write_text(mutant_source(mutant))
    results = grade_submission(folder, sandbox=catalogue.sandbox, modules=catalogue.no_integration,
                               cuda=device == "cuda")
    lost = [t for t in results["tests"] if t["score"] < t["max_score"]]
    assert [function_of(t) for t in lost] == ["p_sample"], table(results)
    assert f"used with tensors on {device}" in lost[0]["output"], lost[0]["output"]
    assert "register_buffer" in lost[0]["output"]  # the hint fits the cause
