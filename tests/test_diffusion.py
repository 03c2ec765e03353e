"""The reference `solutions/diffusion.py` against the handout's formulas.

Expected values are computed here, independently, in float64 with numpy and `math`, straight from the
handout's equations (see the module docstring of diffusion.py). Tolerances follow from float32 rounding:
storing a float64 value in float32 has relative error at most U = 2**-24, and each float32 multiply, add or
sqrt adds at most U relative to its result. A chain of k such operations on terms a_j is therefore off by at
most about k * U * sum_j |a_j| (the bound() helper below), which grows near t = T of large T where
1 / sqrt(abar_t) amplifies x0_hat.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from diffusion import Diffusion, cosine_schedule, extract, linear_schedule

U = 2.0**-24  # unit roundoff of float32
T_VALUES = [1, 2, 10, 50, 1000]


def handout_cosine_alphas(T, s=0.008):
    f = [math.cos(((t / T) + s) / (1 + s) * math.pi / 2) ** 2 for t in range(T + 1)]
    abar = [ft / f[0] for ft in f]
    return np.array([min(max(abar[t] / abar[t - 1], 0.001), 1.0) for t in range(1, T + 1)])


def handout_buffers(alphas):
    """Every buffer of the contract, in float64, from per-step alphas (index i is step t = i + 1)."""
    abar = np.cumprod(alphas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    return {
        "alphas": alphas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": abar_prev,
        "sqrt_alphas_cumprod": np.sqrt(abar),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - abar),
        "posterior_variance": (1 - abar_prev) * (1 - alphas) / (1 - abar),
        "posterior_mean_coef1": np.sqrt(abar_prev) * (1 - alphas) / (1 - abar),
        "posterior_mean_coef2": np.sqrt(alphas) * (1 - abar_prev) / (1 - abar),
    }


def bound(k, *terms):
    """Elementwise float32 error bound of a k-operation chain over the given terms."""
    return k * U * sum(np.abs(np.asarray(term, dtype=np.float64)) for term in terms)


def assert_within(got, expected, tol, what):
    got = got.detach().double().numpy()
    err = np.abs(got - expected)
    worst = np.unravel_index(np.argmax(err - tol), err.shape)
    assert np.all(err <= tol), (
        f"{what}: |got - expected| = {err[worst]:.3g} > bound {np.broadcast_to(tol, err.shape)[worst]:.3g} "
        f"at {tuple(int(i) for i in worst)}")


class ScaledInput(nn.Module):
    """eps_theta(x, t) = w * x + b[t]: simple enough to evaluate by hand in float64."""

    def __init__(self, T, w=0.5):
        super().__init__()
        self.w = w
        self.b = nn.Parameter(torch.linspace(-0.3, 0.3, T))

    def forward(self, x, t):
        return self.w * x + self.b[t].view(-1, 1, 1, 1)

    def float64(self, x, t):
        return self.w * x + self.b.detach().double().numpy()[t].reshape(-1, 1, 1, 1)


class Recorder(nn.Module):
    """Predicts zero noise and records the time indices it is called with."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, x, t):
        self.calls.append(t.clone())
        return torch.zeros_like(x) + 0 * self.anchor


def make(T, model=None, schedule="cosine", loss_type="l1", channels=3, size=4):
    return Diffusion(model if model is not None else ScaledInput(T), image_size=size,
                     channels=channels, timesteps=T, schedule=schedule, loss_type=loss_type)


# --- schedules -----------------------------------------------------------------------------------

@pytest.mark.parametrize("T", T_VALUES)
def test_cosine_schedule_matches_handout_formula(T):
    got = cosine_schedule(T)
    assert got.shape == (T,) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), handout_cosine_alphas(T), rtol=1e-12, atol=0)


@pytest.mark.parametrize("T", T_VALUES)
def test_cosine_schedule_is_clipped_so_abar_never_reaches_zero(T):
    alphas = cosine_schedule(T)
    assert alphas.min() >= 0.001 and alphas.max() <= 1.0
    assert torch.cumprod(alphas, 0)[-1] > 0


@pytest.mark.parametrize("T", T_VALUES)
def test_linear_schedule_runs_from_start_to_end(T):
    got = linear_schedule(T)
    assert got.shape == (T,)
    assert got[0].item() == pytest.approx(0.9999, abs=1e-15)
    if T > 1:
        assert got[-1].item() == pytest.approx(0.98, abs=1e-15)
        assert torch.all(got[1:] < got[:-1])


# --- buffers --------------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("T", T_VALUES)
def test_buffers_match_handout_in_float64_rounded_once_to_float32(T, schedule):
    diffusion = make(T, schedule=schedule)
    alphas = handout_cosine_alphas(T) if schedule == "cosine" else np.linspace(0.9999, 0.98, T)
    for name, expected in handout_buffers(alphas).items():
        got = getattr(diffusion, name)
        assert got.dtype == torch.float32 and got.shape == (T,), name
        assert name in dict(diffusion.named_buffers()), f"{name} is not a registered buffer"
        # One rounding of the float64 value (and 1e-12 for linspace vs np.linspace differences).
        assert_within(got, expected, U * np.abs(expected) + 1e-12, name)


def test_posterior_variance_is_exactly_zero_at_the_first_index():
    assert make(50).posterior_variance[0].item() == 0.0
    assert make(1).posterior_variance[0].item() == 0.0


def test_extract_broadcasts_per_example_coefficients():
    a = torch.arange(10.0)
    t = torch.tensor([3, 0, 9])
    out = extract(a, t, (3, 2, 5, 5))
    assert out.shape == (3, 1, 1, 1)
    assert out.flatten().tolist() == [3.0, 0.0, 9.0]


def test_invalid_schedule_and_loss_names_are_rejected():
    with pytest.raises(ValueError, match="schedule"):
        make(5, schedule="quadratic")
    with pytest.raises(ValueError, match="loss_type"):
        make(5, loss_type="huber")


# --- forward process and posterior ---------------------------------------------------------------

@pytest.mark.parametrize("T", [1, 2, 50, 1000])
def test_q_sample_is_closed_form_forward_process(T):
    diffusion = make(T)
    x_0 = torch.rand(8, 3, 4, 4) * 2 - 1
    noise = torch.randn_like(x_0)
    t = torch.randint(0, T, (8,))
    t[0], t[-1] = 0, T - 1
    buf = handout_buffers(handout_cosine_alphas(T))
    a = buf["sqrt_alphas_cumprod"][t].reshape(-1, 1, 1, 1) * x_0.double().numpy()
    b = buf["sqrt_one_minus_alphas_cumprod"][t].reshape(-1, 1, 1, 1) * noise.double().numpy()
    assert_within(diffusion.q_sample(x_0, t, noise), a + b, bound(4, a, b), "q_sample")


@pytest.mark.parametrize("T", [1, 2, 50, 1000])
def test_q_posterior_mean_and_variance_match_handout(T):
    diffusion = make(T)
    x_0, x_t = torch.rand(8, 3, 4, 4) * 2 - 1, torch.randn(8, 3, 4, 4)
    t = torch.arange(8) * (T - 1) // 7
    buf = handout_buffers(handout_cosine_alphas(T))
    c1 = buf["posterior_mean_coef1"][t].reshape(-1, 1, 1, 1) * x_0.double().numpy()
    c2 = buf["posterior_mean_coef2"][t].reshape(-1, 1, 1, 1) * x_t.double().numpy()
    var = buf["posterior_variance"][t].reshape(-1, 1, 1, 1)
    mean, variance = diffusion.q_posterior(x_0, x_t, t)
    assert_within(mean, c1 + c2, bound(4, c1, c2), "posterior mean")
    assert variance.shape == (8, 1, 1, 1)
    assert_within(variance, var, bound(1, var), "posterior variance")


# --- loss -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("loss_type", ["l1", "l2"])
def test_p_loss_compares_model_output_with_the_noise(loss_type):
    T = 50
    diffusion = make(T, loss_type=loss_type)
    x_0 = torch.rand(16, 3, 4, 4) * 2 - 1
    noise = torch.randn_like(x_0)
    t = torch.randint(0, T, (16,))
    buf = handout_buffers(handout_cosine_alphas(T))
    x_t = (buf["sqrt_alphas_cumprod"][t].reshape(-1, 1, 1, 1) * x_0.double().numpy()
           + buf["sqrt_one_minus_alphas_cumprod"][t].reshape(-1, 1, 1, 1) * noise.double().numpy())
    diff = diffusion.model.float64(x_t, t.numpy()) - noise.double().numpy()
    expected = np.mean(np.abs(diff)) if loss_type == "l1" else np.mean(diff**2)
    got = diffusion.p_loss(x_0, t, noise)
    assert got.dim() == 0
    # Per element a few roundings of O(|x_t| + |noise|) terms, then a float32 mean of n terms.
    scale = np.mean(np.abs(x_t) + np.abs(noise.double().numpy()) + 1) * (1 if loss_type == "l1" else 8)
    tol = 16 * U * scale + math.log2(diff.size) * U * expected
    assert abs(got.item() - expected) <= tol, (got.item(), expected, tol)


def test_forward_draws_one_uniform_t_per_example_and_uses_the_given_noise():
    T, B = 10, 4000
    recorder = Recorder()
    diffusion = make(T, model=recorder, channels=1, size=2)
    x_0 = torch.zeros(B, 1, 2, 2)
    noise = torch.randn_like(x_0)
    loss = diffusion(x_0, noise=noise)
    (t,) = recorder.calls
    assert t.shape == (B,) and t.dtype == torch.int64
    assert t.min() >= 0 and t.max() <= T - 1
    counts = torch.bincount(t, minlength=T).double()
    # Chi-square, 9 degrees of freedom: P(statistic > 50) < 1e-6 for a uniform draw.
    chi2 = ((counts - B / T) ** 2 / (B / T)).sum().item()
    assert chi2 < 50, f"t is not uniform over 0..T-1: counts {counts.tolist()}"
    # The zero-noise-predicting model makes the L1 loss the mean |noise|: the given noise was used.
    assert loss.item() == pytest.approx(noise.abs().mean().item(), rel=1e-6)


def test_forward_rejects_images_of_the_wrong_size_with_a_clear_message():
    diffusion = make(5, channels=3, size=8)
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 3, 8, 8\).*got \(2, 3, 16, 16\)"):
        diffusion(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="channels"):
        diffusion(torch.zeros(2, 1, 8, 8))


# --- sampling -------------------------------------------------------------------------------------

def expected_p_sample_mean(diffusion, x, t, T):
    """Posterior mean at the clamped x0_hat, in float64, plus its float32 error bound."""
    buf = handout_buffers(handout_cosine_alphas(T))
    x64 = x.double().numpy()
    idx = t.numpy()

    def col(name):
        return buf[name][idx].reshape(-1, 1, 1, 1)

    eps = diffusion.model.float64(x64, idx)
    x0_hat = (x64 - col("sqrt_one_minus_alphas_cumprod") * eps) / col("sqrt_alphas_cumprod")
    x0_err = bound(6, x64, col("sqrt_one_minus_alphas_cumprod") * eps) / col("sqrt_alphas_cumprod")
    mean = col("posterior_mean_coef1") * np.clip(x0_hat, -1, 1) + col("posterior_mean_coef2") * x64
    tol = col("posterior_mean_coef1") * x0_err + bound(4, mean, col("posterior_mean_coef2") * x64)
    return mean, tol, col("posterior_variance")


@pytest.mark.parametrize("T", [1, 2, 50, 1000])
def test_p_sample_adds_no_noise_at_the_last_step(T):
    diffusion = make(T)
    x = torch.randn(6, 3, 4, 4)
    t = torch.zeros(6, dtype=torch.long)
    mean, tol, _ = expected_p_sample_mean(diffusion, x, t, T)
    first, second = diffusion.p_sample(x, t, 0), diffusion.p_sample(x, t, 0)
    assert torch.equal(first, second), "the last step must be deterministic"
    assert_within(first, mean, tol, "p_sample at t_index=0")


@pytest.mark.parametrize("T,t_index", [(2, 1), (50, 1), (50, 25), (1000, 999), (1000, 500)])
def test_p_sample_adds_posterior_std_times_injected_noise(T, t_index, monkeypatch):
    diffusion = make(T)
    x = torch.randn(6, 3, 4, 4) * 1.5
    z = torch.randn_like(x)
    monkeypatch.setattr(diffusion, "noise_like", lambda shape, device: z.to(device))
    t = torch.full((6,), t_index, dtype=torch.long)
    mean, tol, var = expected_p_sample_mean(diffusion, x, t, T)
    noise_term = np.sqrt(var) * z.double().numpy()
    assert_within(diffusion.p_sample(x, t, t_index), mean + noise_term,
                  tol + bound(4, noise_term, mean), f"p_sample at t_index={t_index}")


def test_p_sample_clamps_x0_hat_not_x_t(monkeypatch):
    # A large x_t puts x0_hat far outside [-1, 1]; only the clamped x0_hat gives the handout's mean.
    T, t_index = 50, 10
    diffusion = make(T)
    monkeypatch.setattr(diffusion, "noise_like", lambda shape, device: torch.zeros(shape, device=device))
    x = torch.full((2, 3, 4, 4), 5.0)
    t = torch.full((2,), t_index, dtype=torch.long)
    mean, tol, _ = expected_p_sample_mean(diffusion, x, t, T)
    assert np.all(np.abs(x.numpy()) > 1), "the input must exercise the clamp"
    assert_within(diffusion.p_sample(x, t, t_index), mean, tol, "p_sample with clamped x0_hat")


@pytest.mark.parametrize("T", [1, 7])
def test_p_sample_loop_calls_the_model_T_times_from_T_minus_1_down_to_0(T):
    recorder = Recorder()
    diffusion = make(T, model=recorder)
    out = diffusion.p_sample_loop(torch.randn(3, 3, 4, 4))
    assert [c.tolist() for c in recorder.calls] == [[i] * 3 for i in reversed(range(T))]
    assert out.shape == (3, 3, 4, 4)
    assert out.min() >= 0 and out.max() <= 1


def test_p_sample_loop_returns_every_state_mapped_to_unit_range():
    T = 5
    diffusion = make(T)
    start = torch.randn(2, 3, 4, 4)
    torch.manual_seed(1)
    states = diffusion.p_sample_loop(start, return_all_timesteps=True)
    torch.manual_seed(1)
    final = diffusion.p_sample_loop(start)
    assert states.shape == (T + 1, 2, 3, 4, 4)
    assert torch.equal(states[0], ((start + 1) / 2).clamp(0, 1))
    assert torch.equal(states[-1], final)
    assert states.min() >= 0 and states.max() <= 1


def test_sample_returns_a_batch_of_images_on_the_models_device():
    diffusion = make(3, channels=1, size=8)
    out = diffusion.sample(5)
    assert out.shape == (5, 1, 8, 8)
    assert out.device == next(diffusion.model.parameters()).device
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.gpu
def test_sampling_on_cuda_keeps_every_tensor_on_the_gpu():
    diffusion = make(5, channels=3, size=8).cuda()
    out = diffusion.sample(2)
    assert out.is_cuda and out.shape == (2, 3, 8, 8)
