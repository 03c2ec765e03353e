"""Plausible student bugs, as exact text substitutions on the reference solutions/diffusion.py.

Each mutant is a bug in ONE function, named by `loses` (the <function> part of the graded tests'
names "<function>: <behaviour>"). Graded with the full rubric, it must lose points in a test of
that function and in no test of another function (integration tests, named "integration: ...",
excepted): one bug, one place. tests/test_grading_validity.py checks this with the real engine,
and tests/margins.py measures how far each bug lands beyond each test's allowance.

Symmetric changes are not bugs and are not listed here: e.g. F.l1_loss(noise, predicted) instead of
F.l1_loss(predicted, noise), or adding sqrt(variance) * z at the last step (the variance is exactly 0
there); tests/submissions/correct/ holds solutions written that way, which must get full marks.
"""

from dataclasses import dataclass
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[2] / "solutions" / "diffusion.py"


@dataclass(frozen=True)
class Mutant:
    name: str
    why: str  # the student's misconception, in words
    old: str  # exact text of the reference, occurring exactly once
    new: str
    loses: tuple  # <function> prefixes of graded tests that must lose points
    more: tuple = ()  # further (old, new) substitutions of the same bug
    expect: str = ""  # a regular expression the failing tests' messages must contain

    def apply(self, source):
        for old, new in ((self.old, self.new), *self.more):
            count = source.count(old)
            if count != 1:
                raise ValueError(f"mutant {self.name}: the text to replace occurs {count} times in "
                                 f"the reference (expected exactly once); update the mutant:\n{old}")
            source = source.replace(old, new)
        return source


def mutant_source(mutant, reference=REFERENCE):
    """The full text of the reference with `mutant` applied."""
    return mutant.apply(Path(reference).read_text())


Q_SAMPLE = ("extract(self.sqrt_alphas_cumprod, t, x_0.shape) * x_0\n"
            "                + extract(self.sqrt_one_minus_alphas_cumprod, t, x_0.shape) * noise)")

MUTANTS = [
    # --- Diffusion.__init__: the schedule buffers ---
    Mutant("abar_prev_padded_with_zero",
           "alphas_cumprod_prev starts with 0 instead of abar_0 = 1",
           "F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)",
           "F.pad(alphas_cumprod[:-1], (1, 0), value=0.0)",
           ("Diffusion.__init__",)),
    Mutant("abar_prev_shifted_the_wrong_way",
           "alphas_cumprod_prev[i] holds abar_{i+2} (shifted left instead of right)",
           "F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)",
           "F.pad(alphas_cumprod[1:], (0, 1), value=1.0)",
           ("Diffusion.__init__",)),
    Mutant("abar_prev_not_shifted",
           "alphas_cumprod_prev is a copy of alphas_cumprod (the off-by-one between t and t-1)",
           "F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)",
           "alphas_cumprod.clone()",
           ("Diffusion.__init__",)),
    Mutant("buffer_no_sqrt_on_one_minus_abar",
           "sqrt_one_minus_alphas_cumprod holds 1 - abar (no square root)",
           'register("sqrt_one_minus_alphas_cumprod", torch.sqrt(1.0 - alphas_cumprod))',
           'register("sqrt_one_minus_alphas_cumprod", 1.0 - alphas_cumprod)',
           ("Diffusion.__init__",)),
    Mutant("posterior_coefficients_swapped",
           "the x_0 and x_t coefficients of the posterior mean are swapped",
           'register("posterior_mean_coef1",\n'
           '                 torch.sqrt(alphas_cumprod_prev) * (1.0 - alphas) / (1.0 - alphas_cumprod))\n'
           '        register("posterior_mean_coef2",\n'
           '                 torch.sqrt(alphas) * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod))',
           'register("posterior_mean_coef2",\n'
           '                 torch.sqrt(alphas_cumprod_prev) * (1.0 - alphas) / (1.0 - alphas_cumprod))\n'
           '        register("posterior_mean_coef1",\n'
           '                 torch.sqrt(alphas) * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod))',
           ("Diffusion.__init__",)),
    Mutant("posterior_variance_uses_abar_not_abar_prev",
           "posterior variance with (1 - abar_t) in the numerator instead of (1 - abar_{t-1})",
           "(1.0 - alphas_cumprod_prev) * (1.0 - alphas) / (1.0 - alphas_cumprod))",
           "(1.0 - alphas_cumprod) * (1.0 - alphas) / (1.0 - alphas_cumprod))",
           ("Diffusion.__init__",)),

    # --- q_sample ---
    Mutant("q_sample_uses_alpha_not_abar",
           "q_sample uses the one-step alpha_t instead of the cumulative abar_t",
           Q_SAMPLE,
           "extract(torch.sqrt(self.alphas), t, x_0.shape) * x_0\n"
           "                + extract(torch.sqrt(1.0 - self.alphas), t, x_0.shape) * noise)",
           ("q_sample",)),
    Mutant("q_sample_no_sqrt_on_abar",
           "q_sample scales x_0 by abar_t instead of sqrt(abar_t)",
           "extract(self.sqrt_alphas_cumprod, t, x_0.shape) * x_0",
           "extract(self.alphas_cumprod, t, x_0.shape) * x_0",
           ("q_sample",)),
    Mutant("q_sample_no_sqrt_on_one_minus_abar",
           "q_sample scales the noise by 1 - abar_t instead of sqrt(1 - abar_t)",
           "+ extract(self.sqrt_one_minus_alphas_cumprod, t, x_0.shape) * noise)",
           "+ extract(1.0 - self.alphas_cumprod, t, x_0.shape) * noise)",
           ("q_sample",)),
    Mutant("q_sample_uses_abar_prev",
           "q_sample indexes abar_{t-1} (alphas_cumprod_prev): paper step and code index mixed up",
           Q_SAMPLE,
           "extract(torch.sqrt(self.alphas_cumprod_prev), t, x_0.shape) * x_0\n"
           "                + extract(torch.sqrt(1.0 - self.alphas_cumprod_prev), t, x_0.shape) * noise)",
           ("q_sample",)),

    Mutant("q_sample_no_return",
           "the result is computed but not returned (the function returns None)",
           "        return (extract(self.sqrt_alphas_cumprod, t, x_0.shape) * x_0",
           "        x_t = (extract(self.sqrt_alphas_cumprod, t, x_0.shape) * x_0",
           ("q_sample",), expect=r"returned None"),
    Mutant("q_sample_returns_ellipsis",
           "the placeholder `return ...` left in place of the formula",
           "        return (extract(self.sqrt_alphas_cumprod, t, x_0.shape) * x_0",
           "        return ...\n        x_t = (extract(self.sqrt_alphas_cumprod, t, x_0.shape) * x_0",
           ("q_sample",), expect=r"returned Ellipsis"),

    # --- p_loss ---
    Mutant("l2_loss_when_l1_asked",
           "always the mean squared error",
           "return LOSSES[self.loss_type](predicted_noise, noise)",
           "return F.mse_loss(predicted_noise, noise)",
           ("p_loss",)),
    Mutant("l1_loss_when_l2_asked",
           "always the mean absolute error",
           "return LOSSES[self.loss_type](predicted_noise, noise)",
           "return F.l1_loss(predicted_noise, noise)",
           ("p_loss",)),
    Mutant("p_loss_model_given_t_plus_1",
           "the model is given paper step t = i + 1 instead of the code index i",
           "predicted_noise = self.model(x_t, t)",
           "predicted_noise = self.model(x_t, t + 1)",
           ("p_loss",)),

    # --- forward ---
    Mutant("forward_one_t_for_the_whole_batch",
           "one time index drawn for the batch instead of one per example",
           "t = torch.randint(0, self.num_timesteps, (batch_size,), device=x_0.device)",
           "t = torch.randint(0, self.num_timesteps, (1,), device=x_0.device).expand(batch_size)",
           ("forward",)),
    Mutant("forward_t_in_1_to_T",
           "t drawn from the paper's {1, ..., T} instead of the code's {0, ..., T-1}",
           "t = torch.randint(0, self.num_timesteps, (batch_size,), device=x_0.device)",
           "t = torch.randint(1, self.num_timesteps + 1, (batch_size,), device=x_0.device)",
           ("forward",)),
    Mutant("forward_never_draws_t_0",
           "t drawn from {1, ..., T-1}: the first step is never trained",
           "t = torch.randint(0, self.num_timesteps, (batch_size,), device=x_0.device)",
           "t = torch.randint(1, self.num_timesteps, (batch_size,), device=x_0.device)",
           ("forward",)),
    Mutant("forward_ignores_the_given_noise",
           "forward always draws its own noise, even when noise is given",
           "if noise is None:\n            noise = self.noise_like(x_0.shape, x_0.device)",
           "noise = self.noise_like(x_0.shape, x_0.device)",
           ("forward",)),

    # --- p_sample ---
    Mutant("p_sample_no_clamp_of_x0_hat",
           "x0_hat is not clamped to [-1, 1]",
           "x0_hat = x0_hat.clamp(-1.0, 1.0)",
           "x0_hat = x0_hat",
           ("p_sample",)),
    Mutant("p_sample_clamps_x_t_not_x0_hat",
           "the current image x_t is clamped instead of x0_hat",
           "x0_hat = x0_hat.clamp(-1.0, 1.0)\n        mean, variance = self.q_posterior(x0_hat, x, t)",
           "x = x.clamp(-1.0, 1.0)\n        mean, variance = self.q_posterior(x0_hat, x, t)",
           ("p_sample",)),
    Mutant("p_sample_x0_hat_multiplies_by_sqrt_abar",
           "eq. (4) inverted: multiplies by sqrt(abar_t) instead of dividing",
           "/ extract(self.sqrt_alphas_cumprod, t, x.shape))",
           "* extract(self.sqrt_alphas_cumprod, t, x.shape))",
           ("p_sample",)),
    Mutant("p_sample_noise_scaled_by_variance",
           "noise scaled by the variance instead of the standard deviation",
           "return mean + torch.sqrt(variance) * self.noise_like(x.shape, x.device)",
           "return mean + variance * self.noise_like(x.shape, x.device)",
           ("p_sample",)),
    Mutant("p_sample_beta_noise_even_at_last_step",
           "noise with variance beta_t = 1 - alpha_t at every step, the last included",
           "if t_index == 0:\n            return mean\n"
           "        return mean + torch.sqrt(variance) * self.noise_like(x.shape, x.device)",
           "return mean + torch.sqrt(extract(1.0 - self.alphas, t, x.shape))"
           " * self.noise_like(x.shape, x.device)",
           ("p_sample",)),
    Mutant("p_sample_noise_on_the_default_device",
           "noise drawn with torch.randn(shape) on the CPU, not on x's device",
           "return mean + torch.sqrt(variance) * self.noise_like(x.shape, x.device)",
           "return mean + torch.sqrt(variance) * torch.randn(x.shape)",
           ("p_sample",)),

    Mutant("p_sample_plain_cpu_attribute",
           "1 / sqrt(abar) kept as a plain tensor attribute: .to(device) leaves it on the CPU",
           "        x0_hat = ((x - extract(self.sqrt_one_minus_alphas_cumprod, t, x.shape) * predicted_noise)\n"
           "                  / extract(self.sqrt_alphas_cumprod, t, x.shape))",
           "        x0_hat = ((x - extract(self.sqrt_one_minus_alphas_cumprod, t, x.shape) * predicted_noise)\n"
           "                  * extract(self.recip_sqrt_abar, t, x.shape))",
           ("p_sample",),
           more=(('        register("alphas", alphas)\n',
                  '        register("alphas", alphas)\n'
                  '        self.recip_sqrt_abar = (1.0 / torch.sqrt(alphas_cumprod)).float()\n'),),
           expect=r"self\.recip_sqrt_abar is a plain tensor attribute"),
    Mutant("p_sample_float32_noise_scale_squared",
           "sqrt(variance) computed as variance ** 2",
           "return mean + torch.sqrt(variance) * self.noise_like(x.shape, x.device)",
           "return mean + variance ** 2 * self.noise_like(x.shape, x.device)",
           ("p_sample",)),

    # --- p_sample_loop ---
    Mutant("loop_runs_0_to_T_minus_1",
           "the reverse loop runs forward in time, t_index = 0, ..., T-1",
           "for i in reversed(range(self.num_timesteps)):",
           "for i in range(self.num_timesteps):",
           ("p_sample_loop",)),
    Mutant("loop_returns_x_T",
           "each step's result is discarded, so the loop returns (a map of) its start x_T",
           "img = self.p_sample(img, t, i)",
           "x_prev = self.p_sample(img, t, i)",
           ("p_sample_loop",)),
    Mutant("loop_result_not_mapped_to_0_1",
           "the final images stay in [-1, 1] (no unnormalize)",
           "return unnormalize(img)",
           "return img",
           ("p_sample_loop",)),
    Mutant("loop_all_timesteps_without_the_start",
           "return_all_timesteps leaves out x_T: T states instead of T + 1",
           "states = [img]",
           "states = []",
           ("p_sample_loop",)),

    # --- sample ---
    Mutant("sample_channels_last",
           "x_T drawn as (B, H, W, C) instead of (B, C, H, W)",
           "shape = (batch_size, self.channels, self.image_size, self.image_size)",
           "shape = (batch_size, self.image_size, self.image_size, self.channels)",
           ("sample",)),
    Mutant("sample_start_on_the_default_device",
           "x_T drawn with torch.randn(shape) on the CPU, not on the model's device",
           "return self.p_sample_loop(self.noise_like(shape, device))",
           "return self.p_sample_loop(torch.randn(shape))",
           ("sample",)),
]
