"""What is graded, and where the grader's own files live.

A later part adds a graded module by appending a GradedModule (its submission file name, its
hidden test module and rubric, its reference, the given files it needs) -- no engine change.
"""

import os
from dataclasses import dataclass
from pathlib import Path

# The repo root here; /autograder/source on Gradescope (the zip keeps the same layout).
ROOT = Path(os.environ.get("AUTOGRADER_SOURCE") or Path(__file__).resolve().parent.parent)


@dataclass(frozen=True)
class GradedModule:
    submission_file: str   # the file the student submits, e.g. "diffusion.py"
    tests: str             # hidden test module (relative to ROOT), defines TESTS {id: fn(ctx)}
    rubric: str            # points and visibility of each test id (TOML)
    reference: str         # the staff solution the grader imports (never copied to the sandbox)
    given: tuple = ()      # given files copied next to the submission (relative to ROOT)


GRADED_MODULES = (
    GradedModule(
        submission_file="diffusion.py",
        tests="tests_hidden/diffusion_tests.py",
        rubric="tests_hidden/rubric.toml",
        reference="solutions/diffusion.py",
        given=("solutions/unet.py",),
    ),
)

# Grading never runs longer than this (seconds, default), whatever the submission does: once it
# is spent, the remaining tests fail with "time budget exhausted".
DEFAULT_BUDGET_S = 240.0
