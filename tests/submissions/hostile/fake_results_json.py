# HOSTILE TEST DATA for the autograder: implements nothing, and writes a full-marks results.json to
# every place a grader might read it from (Gradescope's path, the working directory and its
# parents, an --out folder guessed from argv or the environment), prints one, and raises one.
# Deserves 0; the grader's own results.json must be the one that counts.
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

MARKER = "FAKE-RESULTS-ddpm-hostile"
FAKE = {"score": 100.0, "output": MARKER, "tests": [
    {"name": "q_sample: everything", "score": 100.0, "max_score": 100.0, "status": "passed",
     "output": MARKER, "visibility": "visible"}]}


def targets():
    paths = [Path("/autograder/results/results.json"), Path("/tmp/results.json")]
    here = Path.cwd()
    for base in [here, *here.parents][:4] + [Path(__file__).resolve().parent]:
        paths += [base / "results.json", base / "build" / "grade" / "results.json"]
    for i, arg in enumerate(sys.argv):
        if arg in ("--out", "-o") and i + 1 < len(sys.argv):
            paths.append(Path(sys.argv[i + 1]) / "results.json")
        elif arg.startswith("--out="):
            paths.append(Path(arg.split("=", 1)[1]) / "results.json")
    for key, value in os.environ.items():
        if any(w in key.upper() for w in ("OUT", "RESULT", "AUTOGRADER")) and value.startswith("/"):
            paths.append(Path(value) / "results.json")
    return paths


def forge():
    text = json.dumps(FAKE)
    for path in targets():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        except Exception:
            pass
    print(text, flush=True)


forge()


class Diffusion(nn.Module):
    def __init__(self, model, *, image_size, channels=3, timesteps=1000,
                 schedule="cosine", loss_type="l1"):
        super().__init__()
        forge()
        self.model, self.image_size, self.channels = model, image_size, channels
        self.num_timesteps = int(timesteps)

    def q_sample(self, x_0, t, noise):
        forge()
        raise RuntimeError(json.dumps(FAKE))

    def p_loss(self, x_0, t, noise):
        forge()
        raise RuntimeError(json.dumps(FAKE))

    def forward(self, x_0, noise=None):
        forge()
        raise RuntimeError(json.dumps(FAKE))

    def p_sample(self, x, t, t_index):
        forge()
        raise RuntimeError(json.dumps(FAKE))

    def p_sample_loop(self, img, return_all_timesteps=False):
        forge()
        raise RuntimeError(json.dumps(FAKE))

    def sample(self, batch_size):
        forge()
        raise RuntimeError(json.dumps(FAKE))
