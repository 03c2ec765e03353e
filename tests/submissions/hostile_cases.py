"""What each hostile submission attempts, and what it deserves.

A case is a file of hostile/ or, when it misbehaves inside an otherwise correct solution,
`patches` applied to the live reference (solutions/diffusion.py) like the mutants, so that
those copies never drift from the reference.

deserves "nothing": it implements nothing real (or cannot even be imported), so every graded test
    must score 0.
deserves "partial": a copy of the reference that misbehaves in some functions: every test whose
    name starts with a prefix in `zero` must score 0, and the total must stay below full marks;
    tests whose name starts with a prefix in `full` must keep full marks (the engine contains the
    damage to the functions that misbehave).
expect: a regular expression (case-insensitive) that must occur in the output of at least one
    test that scored 0: the student is told what went wrong.
checks: extra properties tests/test_grading_validity.py verifies for this case ("memory":
    tests/test_memory.py grades it under a tight --memory-limit-mb; "hang": tests/test_autograder.py
    bounds its grading time).
"""

from dataclasses import dataclass
from pathlib import Path

from .mutants import REFERENCE, Mutant

HOSTILE_DIR = Path(__file__).resolve().parent / "hostile"
END = "    return ((images + 1.0) / 2.0).clamp(0.0, 1.0)\n"  # the reference's last line


@dataclass(frozen=True)
class Hostile:
    file: str
    why: str
    deserves: str  # "nothing" | "partial"
    expect: str = ""
    zero: tuple = ()
    full: tuple = ()
    checks: tuple = ()  # "no_leak", "small_output", "fake_results", "orphans", "memory"

    patches: tuple = ()  # ((old, new), ...) on the reference; then there is no file in hostile/

    @property
    def name(self):
        return self.file.removesuffix(".py")

    def source(self):
        """The submitted diffusion.py."""
        if not self.patches:
            return (HOSTILE_DIR / self.file).read_text()
        text = REFERENCE.read_text()
        for old, new in self.patches:
            text = Mutant(self.name, self.why, old, new, ()).apply(text)
        return text


def before(anchor, hostile):
    """A patch that inserts `hostile` just before `anchor`, a line of the reference."""
    return (anchor, hostile + anchor)


# Grows by 64 MB a step, every page written, until it is stopped (the memory limit, issue 14).
RUNAWAY = ("        _hoard = []\n"
           "        while True:  # grows without end: 64 MB a step, every page written\n"
           "            _hoard.append(torch.ones(1 << 24))\n")

# Loops forever: spliced in at the start of a function body.
HANG = "        while True:  # never returns\n            pass\n"


def at_end(hostile):
    """A patch that appends `hostile` to the reference: it runs at the end of the import."""
    return (END, END + "\n\n" + hostile)


HOSTILE = [
    Hostile("syntax_error.py", "does not parse", "nothing", expect=r"SyntaxError|syntax"),
    Hostile("import_missing_module.py", "a correct solution that imports a module that does "
            "not exist", "nothing", expect=r"ddpm_course_helpers|No module named",
            patches=(before("import torch\n", "import ddpm_course_helpers  # not installed\n"),)),
    Hostile("sys_exit_at_import.py", "a correct solution that calls sys.exit(0) at import",
            "nothing", expect=r"exit", patches=(at_end("import sys\n\nsys.exit(0)\n"),)),
    Hostile("infinite_loop_at_import.py", "the import never finishes", "nothing",
            expect=r"time"),
    Hostile("infinite_loop_in_q_sample.py", "q_sample never returns", "partial",
            expect=r"time", zero=("q_sample",), full=("Diffusion.__init__",),
            patches=(before("        return (extract(self.sqrt_alphas_cumprod, t, x_0.shape) * x_0\n",
                            "        while True:  # never returns\n            pass\n"),)),
    Hostile("os_exit_in_p_sample.py", "os._exit(0) inside p_sample", "partial",
            expect=r"exit|crash|died|terminated", zero=("p_sample",),
            full=("Diffusion.__init__", "q_sample"),
            patches=(before("        predicted_noise = self.model(x, t)\n",
                            "        import os\n\n        os._exit(0)\n"),)),
    Hostile("segfault_in_p_loss.py", "a segmentation fault inside p_loss", "partial",
            expect=r"crash|signal|segmentation|SIGSEGV", zero=("p_loss",),
            full=("Diffusion.__init__", "q_sample"),
            patches=(before("        x_t = self.q_sample(x_0, t, noise)\n",
                            "        import ctypes\n\n"
                            "        ctypes.string_at(0)  # reads address 0: SIGSEGV\n"),)),
    Hostile("ignore_sigterm_loop_in_p_sample_loop.py",
            "ignores SIGTERM/SIGINT/SIGHUP and loops forever in p_sample_loop", "partial",
            expect=r"time", zero=("p_sample_loop",), full=("Diffusion.__init__", "q_sample"),
            patches=(before("        states = [img]\n",
                            "        while True:  # never returns; only SIGKILL ends this\n"
                            "            pass\n"),
                     at_end("import signal\n\nfor _sig in (signal.SIGTERM, signal.SIGINT, "
                            "signal.SIGHUP):\n    signal.signal(_sig, signal.SIG_IGN)\n"))),
    Hostile("huge_output.py", "prints hundreds of megabytes", "nothing",
            checks=("small_output",)),
    Hostile("memory_blowup.py", "tries to fill 40 GB of memory", "nothing",
            expect=r"memory|alloc"),
    Hostile("runaway_memory_in_p_loss_and_forward.py",
            "p_loss and forward keep appending 64 MB tensors (pages written) until stopped",
            "partial", expect=r"ran out of memory in `(p_loss|forward)` \(limit \d+ MB",
            zero=("p_loss", "forward"),
            full=("Diffusion.__init__", "q_sample", "q_posterior", "p_sample", "p_sample_loop",
                  "sample"), checks=("memory",),
            patches=(before("        x_t = self.q_sample(x_0, t, noise)\n", RUNAWAY),
                     before("        batch_size = x_0.shape[0]\n", RUNAWAY))),
    Hostile("hangs_everywhere.py", "every function of the reference loops forever", "nothing",
            expect=r"timed out earlier", checks=("hang",),
            patches=tuple(before(anchor, HANG) for anchor in (
                "        self.num_timesteps = int(timesteps)\n",
                "        return (extract(self.sqrt_alphas_cumprod, t, x_0.shape) * x_0\n",
                "        x_t = self.q_sample(x_0, t, noise)\n",
                "        batch_size = x_0.shape[0]\n",
                "        predicted_noise = self.model(x, t)\n",
                "        states = [img]\n")) + (at_end(
                "def _hang(*args, **kwargs):\n    while True:\n        pass\n\n\n"
                "Diffusion.q_posterior = _hang\nDiffusion.sample = _hang\n"),)),
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
