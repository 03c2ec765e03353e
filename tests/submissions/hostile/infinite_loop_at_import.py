# HOSTILE TEST DATA for the autograder: the import never finishes.
import torch
from torch import nn

while True:
    pass


class Diffusion(nn.Module):
    pass
