"""What each file in hostile/ attempts, and what it deserves.

deserves "nothing": it implements nothing real (or cannot even be imported), so every graded test
    must score 0.
deserves "partial": a copy of the reference that misbehaves in some functions: every test whose
    name starts with a prefix in `zero` must score 0, and the total must stay below full marks;
    tests whose name starts with a prefix in `full` must keep full marks (the engine contains the
    damage to the functions that misbehave).
expect: a regular expression (case-insensitive) that must occur in the output of at least one
    test that scored 0: the student is told what went wrong.
checks: extra properties tests/test_grading_validity.py verifies for this case.
"""

from dataclasses import dataclass
from pathlib import Path

HOSTILE_DIR = Path(__file__).resolve().parent / "hostile"


@dataclass(frozen=True)
class Hostile:
    file: str
    why: str
    deserves: str  # "nothing" | "partial"
    expect: str = ""
    zero: tuple = ()
    full: tuple = ()
    checks: tuple = ()  # "no_leak", "small_output", "fake_results", "orphans"

    @property
    def path(self):
        return HOSTILE_DIR / self.file

    @property
    def name(self):
        return self.file.removesuffix(".py")


HOSTILE = [
    Hostile("syntax_error.py", "does not parse", "nothing", expect=r"SyntaxError|syntax"),
    Hostile("import_missing_module.py", "imports a module that does not exist", "nothing",
            expect=r"ddpm_course_helpers|No module named"),
    Hostile("sys_exit_at_import.py", "sys.exit(0) at import", "nothing", expect=r"exit"),
    Hostile("infinite_loop_at_import.py", "the import never finishes", "nothing",
            expect=r"time"),
    Hostile("infinite_loop_in_q_sample.py", "q_sample never returns", "partial",
            expect=r"time", zero=("q_sample",), full=("Diffusion.__init__",)),
    Hostile("os_exit_in_p_sample.py", "os._exit(0) inside p_sample", "partial",
            expect=r"exit|crash|died|terminated", zero=("p_sample",),
            full=("Diffusion.__init__", "q_sample")),
    Hostile("segfault_in_p_loss.py", "a segmentation fault inside p_loss", "partial",
            expect=r"crash|signal|segmentation|SIGSEGV", zero=("p_loss",),
            full=("Diffusion.__init__", "q_sample")),
    Hostile("ignore_sigterm_loop_in_p_sample_loop.py",
            "ignores SIGTERM/SIGINT/SIGHUP and loops forever in p_sample_loop", "partial",
            expect=r"time", zero=("p_sample_loop",), full=("Diffusion.__init__", "q_sample")),
    Hostile("huge_output.py", "prints hundreds of megabytes", "nothing",
            checks=("small_output",)),
    Hostile("memory_blowup.py", "tries to fill 40 GB of memory", "nothing",
            expect=r"memory|alloc"),
    Hostile("fake_results_json.py", "writes and prints a full-marks results.json", "nothing",
            checks=("fake_results",)),
    Hostile("read_hidden_files.py",
            "reads the hidden tests, the grader and the reference and leaks them", "nothing",
            checks=("no_leak",)),
    Hostile("patch_comparisons.py", "patches allclose/isclose/equal/assert_close to pass",
            "nothing"),
    Hostile("magic_tensor.py", "returns a tensor subclass that claims equality", "nothing"),
    Hostile("orphan_processes.py",
            "leaves processes behind that later write a full-marks results.json", "nothing",
            checks=("orphans", "fake_results")),
]
