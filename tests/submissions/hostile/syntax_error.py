# HOSTILE TEST DATA for the autograder: a file that does not parse (a missing parenthesis).
import torch
from torch import nn


class Diffusion(nn.Module):
    def __init__(self, model, *, image_size, channels=3, timesteps=1000,
                 schedule="cosine", loss_type="l1":
        super().__init__()
