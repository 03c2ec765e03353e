"""Margins of the hidden tests: how far each catalogued bug lands beyond each test's allowance.

For a graded test, a bug's margin is the largest |got - expected| / allowance over the test's
comparisons (autograder.checks.RECORD notes it); the test's margin is the smallest over the bugs it
catches by a numeric comparison. The error model promises a margin of at least 10 everywhere
(checked by tests/test_grading_validity.py). The correct alternates' worst ratio (which must stay
below 1) is reported beside it.

    python tests/margins.py            # grades the catalogues (a few minutes), prints the table
    python tests/margins.py p_sample   # only the mutants and correct forms whose name has it
"""

import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (str(ROOT), str(ROOT / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

from submissions.correct_forms import ALTERNATES  # noqa: E402
from submissions.mutants import MUTANTS, mutant_source  # noqa: E402

from autograder import checks  # noqa: E402
from autograder.config import GRADED_MODULES  # noqa: E402
from autograder.grade import default_hide, grade_submission, load_rubric  # noqa: E402
from autograder.runtime.sandbox import Sandbox  # noqa: E402

MIN_MARGIN = 10.0
PART1 = tuple(m for m in GRADED_MODULES if m.name == "diffusion")  # the catalogues grade diffusion.py
CORRECT_DIR = ROOT / "tests" / "submissions" / "correct"


def function_of(test):
    return test["name"].split(":", 1)[0]


def is_integration(test):
    return function_of(test) == "integration"


def correct_sources():
    """{name: source} of every correct implementation: the alternates and the files in correct/."""
    out = {a.name: a.source() for a in ALTERNATES}
    out.update({p.stem: p.read_text() for p in sorted(CORRECT_DIR.glob("*.py"))})
    return out


def without_integration(folder):
    """PART1 with the integration tests left out (a bug may fail those anywhere)."""
    modules = []
    for module in PART1:
        tests = [t for t in load_rubric(module) if not is_integration(t)]
        path = Path(folder) / f"rubric-{module.name}-no-integration.toml"
        path.write_text("".join(
            f"[[test]]\nid = {json.dumps(t['id'])}\nname = {json.dumps(t['name'])}\n"
            f"points = {t['points']}\nvisibility = {json.dumps(t.get('visibility', 'visible'))}\n\n"
            for t in tests))
        modules.append(dataclasses.replace(module, rubric=str(path)))
    return modules


class Catalogue:
    """Grades submissions in one sandbox; keeps each one's results and recorded ratios."""

    def __init__(self, sandbox, folder):
        self.sandbox, self.folder = sandbox, Path(folder)
        self.runs = {}

    def grade(self, key, text, modules=PART1):
        if key not in self.runs:
            d = self.folder / key
            d.mkdir(mode=0o700, exist_ok=True)
            (d / "diffusion.py").write_text(text)
            checks.RECORD.ratios.clear()
            results = grade_submission(d, sandbox=self.sandbox, modules=modules)
            self.runs[key] = (results, dict(checks.RECORD.ratios))
        return self.runs[key]


def ids_by_name():
    return {t["name"]: t["id"] for m in PART1 for t in load_rubric(m)}


def margins(catalogue, mutant_keys, correct_keys):
    """{test id: row} with the bugs each test catches and their margins."""
    names = ids_by_name()
    rows = {}
    for m in PART1:
        for t in load_rubric(m):
            rows[t["id"]] = {"name": t["name"], "numeric": [], "structural": [], "other": [],
                             "correct_worst": 0.0}
    for key in mutant_keys:
        results, ratios = catalogue.runs[key]
        for t in results["tests"]:
            if t["score"] >= t["max_score"]:
                continue
            test_id = names[t["name"]]
            r = ratios.get(test_id)
            if r is None:
                rows[test_id]["other"].append(key)
            elif math.isinf(r):
                rows[test_id]["structural"].append(key)
            else:
                rows[test_id]["numeric"].append((r, key))
    for key in correct_keys:
        _, ratios = catalogue.runs[key]
        for test_id, r in ratios.items():
            rows[test_id]["correct_worst"] = max(rows[test_id]["correct_worst"], r)
    return rows


def _fmt(margin):
    return "inf (exact)" if margin > 1e100 else f"{margin:.3g}"  # an allowance of 0: exact checks


def table(rows):
    lines = ["| test | bugs caught (numeric / structural / exact checks) | min margin | median "
             "margin | weakest bug | worst correct ratio |", "|---|---|---|---|---|---|"]
    for test_id, row in rows.items():
        num = sorted(row["numeric"])
        lo = _fmt(num[0][0]) if num else "-"
        med = _fmt(statistics.median(r for r, _ in num)) if num else "-"
        weakest = num[0][1] if num else ""
        lines.append(f"| {test_id} | {len(num)} / {len(row['structural'])} / {len(row['other'])} "
                     f"| {lo} | {med} | {weakest} | {row['correct_worst']:.3g} |")
    return "\n".join(lines)


def grade_all(catalogue, folder, only=()):
    """Grade the correct implementations (full rubric) and the mutants (integration tests left
    out), or those whose name contains a string of `only`; returns (mutant keys, correct keys)."""
    def wanted(name):
        return not only or any(o in name for o in only)

    modules = without_integration(folder)
    mutant_keys = []
    for m in MUTANTS:
        if not wanted(m.name):
            continue
        key = f"mutant-{m.name}"
        catalogue.grade(key, mutant_source(m), modules)
        mutant_keys.append(key)
    correct_keys = []
    for name, text in correct_sources().items():
        if not wanted(name):
            continue
        key = f"correct-{name}"
        catalogue.grade(key, text)
        correct_keys.append(key)
    return mutant_keys, correct_keys


def main():
    folder = Path(tempfile.mkdtemp(prefix="margins-"))
    os.chmod(folder, 0o700)
    with Sandbox(hide=default_hide()) as sandbox:
        catalogue = Catalogue(sandbox, folder)
        mutant_keys, correct_keys = grade_all(catalogue, folder, sys.argv[1:])
    print(table(margins(catalogue, mutant_keys, correct_keys)))
    print()
    for key in correct_keys:
        results, _ = catalogue.runs[key]
        lost = [t["name"] for t in results["tests"] if t["score"] < t["max_score"]]
        print(f"{key}: {results['score']:g}" + (f"  lost: {lost}" if lost else ""))
    for key in mutant_keys:
        results, _ = catalogue.runs[key]
        lost = {}
        for t in results["tests"]:
            if t["score"] < t["max_score"]:
                lost[function_of(t)] = lost.get(function_of(t), 0) + t["max_score"] - t["score"]
        print(f"{key}: -{sum(lost.values()):g} points  {lost}")


if __name__ == "__main__":
    main()
