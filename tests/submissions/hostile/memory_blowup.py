# HOSTILE TEST DATA for the autograder: tries to take 40 GB of memory (and to write every page)
# as soon as a Diffusion is built, and implements nothing. Deserves 0; the grader must survive it.
import torch
from torch import nn

_HOARD = []


def hoard(gigabytes=40):
    big = torch.empty(gigabytes * (1 << 28))  # 40 GB of float32 in one block...
    big.fill_(1.0)                            # ...every page written
    _HOARD.append(big)
    for _ in range(gigabytes):                # and again, 1 GiB at a time
        _HOARD.append(b"\x01" * (1 << 30))


class Diffusion(nn.Module):
    def __init__(self, model, *, image_size, channels=3, timesteps=1000,
                 schedule="cosine", loss_type="l1"):
        super().__init__()
        hoard()

    def q_sample(self, x_0, t, noise):
        hoard()
        return torch.zeros_like(x_0)

    def p_sample(self, x, t, t_index):
        hoard()
        return torch.zeros_like(x)
