"""Diffusion.__init__: the eight schedule buffers, compared with the reference's."""

import pytest
import torch
from public_helpers import assert_matches, check, student_code

CHANNELS, IMAGE_SIZE = 2, 5
CONFIGS = [("cosine", 10), ("cosine", 50), ("cosine", 1000), ("linear", 50)]
HINTS = {
    "alphas": "register the schedule's alphas unchanged (as float32).",
    "alphas_cumprod": "abar at index i is the product alpha_1 ... alpha_{i+1} (torch.cumprod).",
    "alphas_cumprod_prev": "index i holds abar_i, the previous entry of alphas_cumprod, "
                           "with abar_0 = 1 at index 0.",
    "sqrt_alphas_cumprod": "the square root of alphas_cumprod (eq. 2).",
    "sqrt_one_minus_alphas_cumprod": "the square root of 1 - alphas_cumprod (eq. 2).",
    "posterior_variance": "eq. (3) uses abar_{t-1} (alphas_cumprod_prev) and abar_t; it is 0 at "
                          "index 0.",
    "posterior_mean_coef1": "eq. (3): the coefficient on x_0 has sqrt(abar_{t-1}).",
    "posterior_mean_coef2": "eq. (3): the coefficient on x_t has sqrt(alpha_t).",
}

# Tolerance: the reference computes in float64 and stores float32; a correct solution that computes
# in float32 instead is off by about eps32 / (1 - abar_1) relative at the first steps (1 - abar_t is
# rounded where abar_t is close to 1): 6e-8 / 4e-5 = 1.5e-3 for the cosine schedule at T = 1000
# (measured: 3.6e-4), less for the other schedules. Wrong formulas are off by far more than 2e-3
# somewhere in each vector. atol covers entries that are exactly 0 (posterior_variance[0]).
RTOL, ATOL = 2e-3, 1e-6


def make(ddpm, schedule, timesteps):
    with student_code("Diffusion.__init__"):
        return ddpm.Diffusion(torch.nn.Conv2d(CHANNELS, CHANNELS, 1), image_size=IMAGE_SIZE,
                              channels=CHANNELS, timesteps=timesteps, schedule=schedule)


@pytest.mark.parametrize("schedule,timesteps", CONFIGS[:1])
def test_buffers_are_registered_float32_vectors_of_length_T(ddpm, schedule, timesteps):
    d = make(ddpm, schedule, timesteps)
    registered = dict(d.named_buffers(recurse=False))
    for name in HINTS:
        check(name in registered,
              f"Diffusion.__init__ (T={timesteps}, {schedule}): no buffer named {name!r}; register it "
              f"with self.register_buffer so that it follows .to(device)")
        value = registered[name]
        check(tuple(value.shape) == (timesteps,) and value.dtype == torch.float32,
              f"Diffusion.__init__ (T={timesteps}, {schedule}): buffer {name} should be float32 of "
              f"shape ({timesteps},), got {value.dtype} of shape {tuple(value.shape)}")


@pytest.mark.parametrize("name", list(HINTS))
@pytest.mark.parametrize("schedule,timesteps", CONFIGS, ids=[f"{s}-{t}" for s, t in CONFIGS])
def test_buffer_matches_reference(ddpm, ref, schedule, timesteps, name):
    d = make(ddpm, schedule, timesteps)
    got = getattr(d, name, None)
    if got is None:
        pytest.fail(f"Diffusion.__init__: no attribute {name!r}", pytrace=False)
    assert_matches(f"Diffusion.__init__ (T={timesteps}, {schedule}): buffer {name}", got,
                   ref[f"buffers/{schedule}-{timesteps}/{name}"], RTOL, ATOL, HINTS[name])
