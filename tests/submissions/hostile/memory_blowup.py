# HOSTILE TEST DATA for the autograder: tries to fill 40 GB of memory (every page written) as soon
# as a Diffusion is built, and implements nothing. Deserves 0; the grader must survive it.
import torch
from torch import nn

_HOARD = []


def hoard(gigabytes=40):
    for _ in range(gigabytes):
        _HOARD.append(b"\x01" * (1 << 30))  # a new 1 GiB bytes object: every page is written


class Diffusion(nn.Module):
    def __init__(self, model, *, image_size, channels=3, timesteps=1000,
                 schedule="cosine", loss_type="l1"):
        super().__init__()
        hoard()
        self.big = torch.ones(int(1e10))  # 40 GB more, if the first did not fail

    def q_sample(self, x_0, t, noise):
        hoard()
        return torch.zeros_like(x_0)

    def p_sample(self, x, t, t_index):
        hoard()
        return torch.zeros_like(x)
