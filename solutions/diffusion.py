"""Denoising diffusion probabilistic models (Ho et al., 2020).

Time convention, used everywhere in this file:
    code index i in 0..T-1  <->  paper step t = i + 1.
    alphas_cumprod[i] = abar_{i+1},  alphas_cumprod_prev[i] = abar_i,  abar_0 = 1.
    The denoising model receives the code index i.
Inside `Diffusion`, images live in [-1, 1]; `p_sample_loop` maps its output to [0, 1].

Equations (numbers as in the handout, assignment/README.md):
    (1) cosine schedule    abar_t = f(t) / f(0),  f(t) = cos^2(((t/T) + s) / (1 + s) * pi/2)
                           alpha_t = clip(abar_t / abar_{t-1}, 0.001, 1)
    (2) forward process    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)
    (3) posterior          q(x_{t-1} | x_t, x_0) = N(coef1 x_0 + coef2 x_t, var I)
                           coef1 = sqrt(abar_{t-1}) (1 - alpha_t) / (1 - abar_t)
                           coef2 = sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t)
                           var   = (1 - abar_{t-1}) (1 - alpha_t) / (1 - abar_t)
    (4) x0 prediction      x0_hat = (x_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t)
    (5) training loss      || eps - eps_theta(x_t, t) ||_1   (mean over all elements)
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def extract(a, t, x_shape):
    """Gather per-step coefficients and shape them for broadcasting.

    Args:
        a: (T,) tensor of coefficients, one per time index.
        t: (B,) int64 time indices in [0, T-1], on the same device as `a`.
        x_shape: shape of the tensor the result will multiply, (B, ...).
    Returns:
        (B, 1, 1, ...) tensor with len(x_shape) dimensions: a[t[b]] for each b.
    """
    batch_size = t.shape[0]
    out = a.gather(-1, t)
    return out.reshape(batch_size, *((1,) * (len(x_shape) - 1)))


def cosine_schedule(timesteps, s=0.008):
    """Per-step alphas of the improved cosine schedule (Nichol & Dhariwal), eq. (1).

    Args:
        timesteps: T, the number of diffusion steps (>= 1).
        s: small offset that keeps the first steps from being too small.
    Returns:
        (T,) float64 tensor; entry i is alpha_{i+1}, clipped to [0.001, 1].
    """
    steps = torch.arange(timesteps + 1, dtype=torch.float64)
    f = torch.cos(((steps / timesteps) + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    alphas = alphas_cumprod[1:] / alphas_cumprod[:-1]
    return torch.clip(alphas, 0.001, 1.0)


def linear_schedule(timesteps, alpha_start=0.9999, alpha_end=0.98):
    """Per-step alphas decreasing linearly from `alpha_start` to `alpha_end`.

    Returns:
        (T,) float64 tensor; entry i is alpha_{i+1}.
    """
    return torch.linspace(alpha_start, alpha_end, timesteps, dtype=torch.float64)


SCHEDULES = {"cosine": cosine_schedule, "linear": linear_schedule}
LOSSES = {"l1": F.l1_loss, "l2": F.mse_loss}


class Diffusion(nn.Module):
    """Gaussian diffusion around a noise-predicting model eps_theta(x_t, i).

    Args:
        model: module called as model(x_t, t) with x_t (B, C, H, W) and t (B,) int64;
            returns the predicted noise, (B, C, H, W).
        image_size: H = W of the images.
        channels: C of the images.
        timesteps: T, the number of diffusion steps.
        schedule: "cosine" (eq. 1) or "linear".
        loss_type: "l1" (eq. 5) or "l2".
    """

    def __init__(self, model, *, image_size, channels=3, timesteps=1000,
                 schedule="cosine", loss_type="l1"):
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
        if loss_type not in LOSSES:
            raise ValueError(f"loss_type must be one of {sorted(LOSSES)}, got {loss_type!r}")
        if int(timesteps) < 1:
            raise ValueError(f"timesteps must be >= 1, got {timesteps}")
        self.model = model
        self.image_size = image_size
        self.channels = channels
        self.num_timesteps = int(timesteps)
        self.loss_type = loss_type

        # Computed in float64, stored as float32 buffers (they follow .to(device)).
        alphas = SCHEDULES[schedule](self.num_timesteps).to(torch.float64)

        # BEGIN SOLUTION
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)

        def register(name, value):
            self.register_buffer(name, value.to(torch.float32))

        register("alphas", alphas)
        register("alphas_cumprod", alphas_cumprod)
        register("alphas_cumprod_prev", alphas_cumprod_prev)

        # q(x_t | x_0), eq. (2)
        register("sqrt_alphas_cumprod", torch.sqrt(alphas_cumprod))
        register("sqrt_one_minus_alphas_cumprod", torch.sqrt(1.0 - alphas_cumprod))

        # q(x_{t-1} | x_t, x_0), eq. (3); the variance is exactly 0 at i = 0.
        register("posterior_variance",
                 (1.0 - alphas_cumprod_prev) * (1.0 - alphas) / (1.0 - alphas_cumprod))
        register("posterior_mean_coef1",
                 torch.sqrt(alphas_cumprod_prev) * (1.0 - alphas) / (1.0 - alphas_cumprod))
        register("posterior_mean_coef2",
                 torch.sqrt(alphas) * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod))
        # END SOLUTION
        # BEGIN STUB
        # # TODO: from `alphas` (float64, shape (T,)) compute, in float64, and register
        # # with self.register_buffer(name, value.to(torch.float32)) these eight buffers,
        # # each of shape (T,):
        # #   alphas, alphas_cumprod, alphas_cumprod_prev (abar_0 = 1 at index 0),
        # #   sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod          -- eq. (2)
        # #   posterior_variance, posterior_mean_coef1 (on x_0),
        # #   posterior_mean_coef2 (on x_t)                                -- eq. (3)
        # # Hints: torch.cumprod; F.pad(x[:-1], (1, 0), value=1.0) shifts a sequence
        # # right by one and puts a 1 in front, keeping its length T.
        # raise NotImplementedError("Diffusion.__init__: compute the schedule buffers (eq. 2-3)")
        # END STUB

    def noise_like(self, shape, device):
        """Standard normal noise of `shape` on `device`: the one place this class draws noise."""
        return torch.randn(shape, device=device)

    def q_sample(self, x_0, t, noise):
        """Sample x_t ~ q(x_t | x_0) in closed form, eq. (2).

        Args:
            x_0: (B, C, H, W) clean images in [-1, 1].
            t: (B,) int64 time indices in [0, T-1].
            noise: (B, C, H, W) standard normal noise (use it; do not draw your own).
        Returns:
            (B, C, H, W) noisy images x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise.
        """
        # BEGIN SOLUTION
        return (extract(self.sqrt_alphas_cumprod, t, x_0.shape) * x_0
                + extract(self.sqrt_one_minus_alphas_cumprod, t, x_0.shape) * noise)
        # END SOLUTION
        # BEGIN STUB
        # # TODO: eq. (2). extract(self.sqrt_alphas_cumprod, t, x_0.shape) gives a
        # # (B, 1, 1, 1) tensor that broadcasts against x_0.
        # raise NotImplementedError("q_sample: implement eq. (2); see the docstring")
        # END STUB

    def q_posterior(self, x_0, x_t, t):
        """Mean and variance of the posterior q(x_{t-1} | x_t, x_0), eq. (3).

        Args:
            x_0: (B, C, H, W) clean (or predicted clean) images in [-1, 1].
            x_t: (B, C, H, W) noisy images at index t.
            t: (B,) int64 time indices in [0, T-1].
        Returns:
            mean: (B, C, H, W) posterior mean, coef1 * x_0 + coef2 * x_t.
            variance: (B, 1, 1, 1) posterior variance.
        """
        mean = (extract(self.posterior_mean_coef1, t, x_t.shape) * x_0
                + extract(self.posterior_mean_coef2, t, x_t.shape) * x_t)
        variance = extract(self.posterior_variance, t, x_t.shape)
        return mean, variance

    def p_loss(self, x_0, t, noise):
        """Training loss for given images, time indices and noise, eq. (5).

        Args:
            x_0: (B, C, H, W) clean images in [-1, 1].
            t: (B,) int64 time indices in [0, T-1].
            noise: (B, C, H, W) standard normal noise.
        Returns:
            Scalar tensor: the mean L1 (loss_type "l1") or mean squared (loss_type "l2")
            difference between `noise` and self.model(q_sample(x_0, t, noise), t).
        """
        # BEGIN SOLUTION
        x_t = self.q_sample(x_0, t, noise)
        predicted_noise = self.model(x_t, t)
        return LOSSES[self.loss_type](predicted_noise, noise)
        # END SOLUTION
        # BEGIN STUB
        # # TODO: noise x_0 with q_sample, predict the noise with self.model(x_t, t),
        # # and compare: F.l1_loss when self.loss_type == "l1", F.mse_loss for "l2".
        # raise NotImplementedError("p_loss: implement eq. (5); see the docstring")
        # END STUB

    def forward(self, x_0, noise=None):
        """Loss on a batch, with one time index drawn uniformly per example.

        Args:
            x_0: (B, C, H, W) clean images in [-1, 1], with C == self.channels and
                H == W == self.image_size.
            noise: optional (B, C, H, W) noise; drawn with self.noise_like when None.
        Returns:
            Scalar loss from p_loss.
        Raises:
            ValueError: if x_0 does not have shape (B, channels, image_size, image_size).
        """
        expected = (self.channels, self.image_size, self.image_size)
        if x_0.dim() != 4 or tuple(x_0.shape[1:]) != expected:
            raise ValueError(
                f"Diffusion expects images of shape (B, {', '.join(map(str, expected))}); "
                f"got {tuple(x_0.shape)}. Check --image_size and the dataset's channels.")
        # BEGIN SOLUTION
        batch_size = x_0.shape[0]
        t = torch.randint(0, self.num_timesteps, (batch_size,), device=x_0.device)
        if noise is None:
            noise = self.noise_like(x_0.shape, x_0.device)
        return self.p_loss(x_0, t, noise)
        # END SOLUTION
        # BEGIN STUB
        # # TODO: draw t (B,) uniformly from {0, ..., T-1}, independently per example,
        # # on x_0's device (torch.randint); draw the noise with self.noise_like when it
        # # is None; return self.p_loss(x_0, t, noise).
        # raise NotImplementedError("forward: draw t and noise, then call p_loss")
        # END STUB

    @torch.no_grad()
    def p_sample(self, x, t, t_index):
        """One reverse step: sample x_{t-1} ~ p_theta(x_{t-1} | x_t).

        Predict the noise, form x0_hat (eq. 4), clamp it to [-1, 1], take the posterior
        mean and variance at (x0_hat, x_t) (eq. 3), and add sqrt(variance) * z with
        z ~ N(0, I) from self.noise_like, except at the last step (t_index == 0).

        Args:
            x: (B, C, H, W) current images x_t.
            t: (B,) int64 tensor filled with t_index.
            t_index: int, the time index in [0, T-1].
        Returns:
            (B, C, H, W) images x_{t-1}.
        """
        # BEGIN SOLUTION
        predicted_noise = self.model(x, t)
        x0_hat = ((x - extract(self.sqrt_one_minus_alphas_cumprod, t, x.shape) * predicted_noise)
                  / extract(self.sqrt_alphas_cumprod, t, x.shape))
        x0_hat = x0_hat.clamp(-1.0, 1.0)
        mean, variance = self.q_posterior(x0_hat, x, t)
        if t_index == 0:
            return mean
        return mean + torch.sqrt(variance) * self.noise_like(x.shape, x.device)
        # END SOLUTION
        # BEGIN STUB
        # # TODO: eq. (4) with self.model(x, t), clamp x0_hat to [-1, 1], then
        # # self.q_posterior(x0_hat, x, t); add sqrt(variance) * self.noise_like(...)
        # # unless t_index == 0.
        # raise NotImplementedError("p_sample: implement one reverse step; see the docstring")
        # END STUB

    @torch.no_grad()
    def p_sample_loop(self, img, return_all_timesteps=False):
        """Run the reverse process from `img` through t_index = T-1, ..., 0.

        Args:
            img: (B, C, H, W) starting images x_T (usually standard normal noise).
            return_all_timesteps: also return every intermediate state.
        Returns:
            (B, C, H, W) final images mapped from [-1, 1] to [0, 1] and clamped; or, with
            return_all_timesteps, (T + 1, B, C, H, W): the start and every state after each
            step, in order, each mapped to [0, 1] the same way (the last entry is the result).
        """
        # BEGIN SOLUTION
        batch_size = img.shape[0]
        states = [img]
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((batch_size,), i, device=img.device, dtype=torch.long)
            img = self.p_sample(img, t, i)
            if return_all_timesteps:
                states.append(img)
        if return_all_timesteps:
            return unnormalize(torch.stack(states))
        return unnormalize(img)
        # END SOLUTION
        # BEGIN STUB
        # # TODO: loop i = T-1, ..., 0 with t = torch.full((B,), i, dtype=torch.long,
        # # device=img.device), calling self.p_sample; map the result with unnormalize().
        # # With return_all_timesteps, stack the start and every state: (T + 1, B, C, H, W).
        # raise NotImplementedError("p_sample_loop: implement the sampling loop; see the docstring")
        # END STUB

    @torch.no_grad()
    def sample(self, batch_size):
        """Generate `batch_size` images in [0, 1], shape (B, C, H, W), on the model's device."""
        # BEGIN SOLUTION
        device = next(self.model.parameters()).device
        shape = (batch_size, self.channels, self.image_size, self.image_size)
        return self.p_sample_loop(self.noise_like(shape, device))
        # END SOLUTION
        # BEGIN STUB
        # # TODO: start from self.noise_like((B, C, H, W), device) on the model's device
        # # (next(self.model.parameters()).device) and return self.p_sample_loop(...).
        # raise NotImplementedError("sample: draw x_T and run p_sample_loop")
        # END STUB


def normalize(images):
    """Map images from [0, 1] to [-1, 1]."""
    return images * 2.0 - 1.0


def unnormalize(images):
    """Map images from [-1, 1] to [0, 1], clamped."""
    return ((images + 1.0) / 2.0).clamp(0.0, 1.0)
