# HOSTILE TEST DATA for the autograder: returns a "magic" tensor subclass that claims to equal
# anything (==, -, abs, allclose, isclose, numpy conversion) and implements nothing.
# Deserves 0: only plain numbers may cross from the submission to the verdict.
import numpy as np
import torch
from torch import nn


class Magic(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in ("allclose", "equal"):
            return True
        if name in ("eq", "__eq__", "isclose"):
            return torch.ones(args[0].shape, dtype=torch.bool)
        if name in ("ne", "__ne__"):
            return torch.zeros(args[0].shape, dtype=torch.bool)
        if name in ("sub", "__sub__", "__rsub__", "abs", "__abs__"):
            return torch.zeros(args[0].shape)
        return super().__torch_function__(func, types, args, kwargs or {})

    def __eq__(self, other):
        return True

    def __array__(self, dtype=None, copy=None):
        return MagicArray(np.zeros(tuple(self.shape), dtype=dtype or np.float32))


class MagicArray(np.ndarray):
    def __new__(cls, base):
        return np.asarray(base).view(cls)

    def __eq__(self, other):
        return np.ones(self.shape, dtype=bool)

    def __sub__(self, other):
        return np.zeros(self.shape)

    __rsub__ = __sub__


def magic(*shape):
    return torch.zeros(*shape).as_subclass(Magic)


class Diffusion(nn.Module):
    def __init__(self, model, *, image_size, channels=3, timesteps=1000,
                 schedule="cosine", loss_type="l1"):
        super().__init__()
        self.model, self.image_size, self.channels = model, image_size, channels
        self.num_timesteps = int(timesteps)
        for name in ("alphas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                     "sqrt_one_minus_alphas_cumprod", "posterior_variance",
                     "posterior_mean_coef1", "posterior_mean_coef2"):
            object.__setattr__(self, name, magic(self.num_timesteps + 1))  # not registered

    def q_sample(self, x_0, t, noise):
        return magic(*x_0.shape)

    def q_posterior(self, x_0, x_t, t):
        return magic(*x_t.shape), magic(x_t.shape[0], 1, 1, 1)

    def p_loss(self, x_0, t, noise):
        return magic()

    def forward(self, x_0, noise=None):
        return magic()

    def p_sample(self, x, t, t_index):
        return magic(*x.shape)

    def p_sample_loop(self, img, return_all_timesteps=False):
        return magic(*img.shape)

    def sample(self, batch_size):
        return magic(batch_size, self.channels, self.image_size, self.image_size)
