# HOSTILE TEST DATA for the autograder: implements nothing; looks for the hidden tests, the rubric,
# the grader and the reference solution, and tries to leak what it finds through stdout, stderr
# and exception messages. Each file it could read is reported as "LEAK:<path>:<text>"; the
# graded results must contain no "LEAK:" at all.
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

NAMES = ("tests.py", "rubric.toml", "checks.py", "grade.py")
GUESSES = ["../tests_hidden/diffusion/tests.py", "../../tests_hidden/diffusion/tests.py",
           "/work/main/tests_hidden/diffusion/tests.py",
           "/work/main/tests_hidden/diffusion/rubric.toml",
           "/work/main/solutions/diffusion.py", "/work/main/autograder/checks.py",
           "/autograder/source/tests_hidden/diffusion/tests.py",
           "/autograder/source/solutions/diffusion.py", "solutions/diffusion.py",
           "../solutions/diffusion.py", "/autograder/source/autograder/grade.py"]


def is_secret(path, text):
    return (path.name in NAMES and "tests_hidden" in path.parts) or path.name in NAMES[2:] \
        or "BEGIN SOLUTION" in text


def hunt(seconds=3.0):
    found = []
    candidates = [Path(p) for p in GUESSES]
    for parent in Path(__file__).resolve().parents:
        candidates += [parent / "tests_hidden" / "diffusion" / "tests.py",
                       parent / "solutions" / "diffusion.py"]
    stop = time.monotonic() + seconds
    for root in ("/work", "/autograder", "/tmp", "/root", "/home", "/srv", "/opt"):
        for dirpath, dirnames, filenames in os.walk(root):
            if time.monotonic() > stop or dirpath.count(os.sep) > 5:
                dirnames[:] = []
                continue
            dirnames[:] = [d for d in dirnames if d not in (".venv", ".git", "node_modules")]
            candidates += [Path(dirpath) / f for f in filenames if f in NAMES or f == "diffusion.py"]
    for path in dict.fromkeys(candidates):
        try:
            text = path.read_text(errors="replace")[:2000]
        except Exception:
            continue
        if text and path.resolve() != Path(__file__).resolve() and is_secret(path, text):
            found.append(f"LEAK:{path}:{text[:300]!r}")
    return "\n".join(found) or "NOTHING-FOUND"


LOOT = hunt()
print(LOOT, flush=True)
print(LOOT, file=sys.stderr, flush=True)


class Diffusion(nn.Module):
    def __init__(self, model, *, image_size, channels=3, timesteps=1000,
                 schedule="cosine", loss_type="l1"):
        super().__init__()
        raise RuntimeError(LOOT)

    def q_sample(self, x_0, t, noise):
        raise RuntimeError(LOOT)

    def p_loss(self, x_0, t, noise):
        raise RuntimeError(LOOT)

    def forward(self, x_0, noise=None):
        raise RuntimeError(LOOT)

    def p_sample(self, x, t, t_index):
        raise RuntimeError(LOOT)

    def p_sample_loop(self, img, return_all_timesteps=False):
        raise RuntimeError(LOOT)

    def sample(self, batch_size):
        raise RuntimeError(LOOT)
