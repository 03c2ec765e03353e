"""The autograder is valid for part 2 (binary_diffusion.py): full marks for the reference and for
correct code written differently, 0 with "not implemented" for the release stub, and every
catalogued bug loses points in the tests of its own function and nowhere else.

Graded with the engine's in-process API on part 2's GradedModule only, in one shared sandbox.
The catalogue (tests/submissions/binary_mutants.py) is made of patches on the live reference.
"""

import sys
from pathlib import Path

import pytest
from submissions.binary_mutants import ALTERNATES, MUTANTS, mutant_source, source
from submissions.stubs import stub_source

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from test_grading_validity import check_schema, function_of, table  # noqa: E402

from autograder.config import GRADED_MODULES  # noqa: E402
from autograder.grade import default_hide, grade_submission, load_rubric  # noqa: E402
from autograder.runtime.sandbox import Sandbox  # noqa: E402

pytestmark = pytest.mark.slow

PART2 = tuple(m for m in GRADED_MODULES if m.name == "binary_diffusion")
RUBRIC = [t for m in PART2 for t in load_rubric(m)]
FULL_MARKS = sum(float(t["points"]) for t in RUBRIC)
REFERENCE = ROOT / "solutions" / "binary_diffusion.py"


class Grader:
    def __init__(self, sandbox, folder):
        self.sandbox, self.folder, self.cache = sandbox, Path(folder), {}

    def grade(self, key, text):
        if key not in self.cache:
            d = self.folder / key
            d.mkdir(mode=0o700, exist_ok=True)
            (d / "binary_diffusion.py").write_text(text)
            self.cache[key] = grade_submission(d, sandbox=self.sandbox, modules=PART2)
        return self.cache[key]


@pytest.fixture(scope="module")
def grader(tmp_path_factory):
    folder = tmp_path_factory.mktemp("graded_binary")
    folder.chmod(0o700)
    with Sandbox(hide=default_hide()) as sandbox:
        yield Grader(sandbox, folder)


def test_rubric_totals_100_and_names_the_functions():
    assert FULL_MARKS == 100
    functions = {function_of(t) for t in RUBRIC}
    assert functions == {"schedule", "logits_to_probs", "q_sample", "q_posterior",
                         "reverse_probs", "p_loss", "forward", "p_sample", "p_sample_loop",
                         "sample"}


def test_reference_gets_full_marks(grader):
    results = grader.grade("reference", REFERENCE.read_text())
    check_schema(results, RUBRIC)
    assert results["score"] == FULL_MARKS, f"the reference lost points:\n{table(results)}"


def test_stub_scores_0_on_every_test_and_says_not_implemented(grader):
    results = grader.grade("stub", stub_source(REFERENCE))
    check_schema(results, RUBRIC)
    bad = [t for t in results["tests"]
           if t["score"] != 0 or "not implemented" not in t["output"].lower()
           or not t["output"].startswith(function_of(t))]
    assert not bad, "on the stub every test must score 0 and say '<function> ...: not " \
                    "implemented':\n" + table({"tests": bad})


def test_catalogue_sizes():
    assert len(MUTANTS) >= 12 and len({m.name for m in MUTANTS}) == len(MUTANTS)
    assert len(ALTERNATES) >= 3
    functions = {function_of(t) for t in RUBRIC}
    for m in MUTANTS:
        assert set(m.loses) <= functions, f"{m.name}: unknown function in loses {m.loses}"


@pytest.mark.parametrize("alternate", ALTERNATES, ids=[a.name for a in ALTERNATES])
def test_correct_alternate_gets_full_marks(grader, alternate):
    results = grader.grade(f"alternate-{alternate.name}", source(alternate.patches))
    check_schema(results, RUBRIC)
    assert results["score"] == FULL_MARKS, (
        f"{alternate.name} ({alternate.why}) is correct but lost points:\n{table(results)}")


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_mutant_loses_points_in_its_own_function_only(grader, mutant):
    results = grader.grade(f"mutant-{mutant.name}", mutant_source(mutant))
    check_schema(results, RUBRIC)
    lost = [t for t in results["tests"] if t["score"] < t["max_score"]]
    assert lost, f"mutant {mutant.name} ({mutant.why}) keeps every point:\n{table(results)}"
    elsewhere = [t for t in lost if function_of(t) not in mutant.loses]
    assert not elsewhere, (f"mutant {mutant.name} ({mutant.why}) also loses points outside "
                           f"{', '.join(mutant.loses)}:\n{table({'tests': elsewhere})}")
    assert all(t["output"].strip() not in ("", "failed") for t in lost), table(results)
