"""What is graded, and where the grader's own files live.

Each graded part is one GradedModule and one folder, tests_hidden/<name>/, holding its probes
(probes.py: run in the sandbox), its verdicts (tests.py: run in the grader) and its rubric
(rubric.toml). Adding a part is an entry here plus that folder: the engine (grade.py) and the
sandbox runtime (runtime/) know no part.
"""

import os
from dataclasses import dataclass
from pathlib import Path

# The repo root here; /autograder/source on Gradescope (the zip keeps the same layout).
ROOT = Path(os.environ.get("AUTOGRADER_SOURCE") or Path(__file__).resolve().parent.parent)


@dataclass(frozen=True)
class GradedModule:
    name: str              # the part's folder under tests_hidden/ (a Python identifier)
    title: str             # how reports name the part
    submission_file: str   # the file the student submits, e.g. "diffusion.py"
    module: str            # the name it is imported under in the sandbox
    reference: str         # the staff solution the grader imports (never copied to the sandbox)
    given: tuple = ()      # given files copied next to the submission (relative to ROOT)
    rubric: str = ""       # points and visibility (TOML); default tests_hidden/<name>/rubric.toml

    @property
    def folder(self):
        return f"tests_hidden/{self.name}"

    @property
    def probes(self):
        return f"{self.folder}/probes.py"

    @property
    def tests(self):
        return f"{self.folder}/tests.py"

    @property
    def rubric_path(self):
        return self.rubric or f"{self.folder}/rubric.toml"


GRADED_MODULES = (
    GradedModule(
        name="diffusion",
        title="Part 1: Gaussian DDPM (diffusion.py)",
        submission_file="diffusion.py",
        module="diffusion",
        reference="solutions/diffusion.py",
        given=("solutions/unet.py",),
    ),
    GradedModule(
        name="binary_diffusion",
        title="Part 2: binary diffusion (binary_diffusion.py)",
        submission_file="binary_diffusion.py",
        module="binary_diffusion",
        reference="solutions/binary_diffusion.py",
    ),
    # A notebook part: the grader reduces the .ipynb to its imports and definitions
    # (autograder/notebook.py) and stages that as lab.py; the reference is converted the same way.
    GradedModule(
        name="lab",
        title="Part 3: the notebook lab (lab.ipynb)",
        submission_file="lab.ipynb",
        module="lab",
        reference="solutions/lab.ipynb",
    ),
)

# Grading never runs longer than this (seconds, default), whatever the submission does: once it
# is spent, the remaining tests fail with "time budget exhausted".
DEFAULT_BUDGET_S = 240.0
