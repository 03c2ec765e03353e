# HOSTILE TEST DATA for the autograder: prints hundreds of megabytes (at import and in every
# method) and implements nothing. Deserves 0; the grader's output must stay small.
import sys

import torch
from torch import nn

LINE = "spam " * 200 + "\n"


def flood(megabytes=200):
    try:
        for _ in range(megabytes * 1000):
            sys.stdout.write(LINE)
            sys.stderr.write(LINE)
    except Exception:  # the grader may cap the output (e.g. a file size limit)
        pass


flood()


class Diffusion(nn.Module):
    def __init__(self, model, *, image_size, channels=3, timesteps=1000,
                 schedule="cosine", loss_type="l1"):
        super().__init__()
        flood()
        self.model, self.image_size, self.channels = model, image_size, channels
        self.num_timesteps = int(timesteps)

    def q_sample(self, x_0, t, noise):
        flood()
        return torch.zeros_like(x_0)

    def p_loss(self, x_0, t, noise):
        flood()
        return torch.zeros(())

    def forward(self, x_0, noise=None):
        flood()
        return torch.zeros(())

    def p_sample(self, x, t, t_index):
        flood()
        return torch.zeros_like(x)

    def p_sample_loop(self, img, return_all_timesteps=False):
        flood()
        return torch.zeros_like(img)

    def sample(self, batch_size):
        flood()
        return torch.zeros(batch_size, self.channels, self.image_size, self.image_size)
