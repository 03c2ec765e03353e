"""The reference `solutions/binary_diffusion.py` against the handout's part 2 and against simulation.

Expected values are computed here independently in float64: the schedule from t explicit flip steps
(simulated, and exactly by powers of the 2x2 flip matrix), the posterior by enumerating Bayes' rule
over the Markov chain Y_0 -> Y_{t-1} -> Y_t, the loss from the KL's definition.

Tolerances. The reference keeps its schedule in float32 buffers; a float32 number is within a
relative U = 2**-24 of the exact value, and each float32 operation adds another U relative to its
result. `allowance` propagates those roundings through the formula by forward-mode autograd
(GUIDE section 7): the error of an evaluation is at most about ops * U * (sum over inputs of
|df/dx * x| + |f|).

Statistical tests state their false-alarm rate: each checks K binomial frequencies at once against
z = the two-sided normal quantile at ALPHA / K (Bonferroni), so the test fails on a correct
implementation with probability at most ALPHA whatever the seed (normal approximation; every
expected count here is in the thousands).
"""

import math
import statistics

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jvp

from binary_diffusion import BinaryDiffusion, binarize, logits_to_probs, schedule, to_unit_range

U = 2.0**-24
ALPHA = 1e-6  # false-alarm rate of each statistical test


def z_quantile(k):
    """Two-sided normal quantile for K simultaneous checks at total false-alarm rate ALPHA."""
    return statistics.NormalDist().inv_cdf(1.0 - ALPHA / (2 * k))


def allowance(f, inputs, ops=16):
    """Per-element bound on |f evaluated in float32 - f exact| (float64 tensors in, out)."""
    xs = [x.double() for x in inputs]
    cond = sum(jvp(lambda x, i=i: f(*xs[:i], x, *xs[i + 1:]), (xs[i],), (xs[i],))[1].abs()
               for i in range(len(xs)))
    return U * ops * (cond + f(*xs).abs())


def flip_matrix(delta):
    """M[a, b] = P(Y_t = b | Y_{t-1} = a), states ordered (+1, -1)."""
    return np.array([[1 - delta, delta], [delta, 1 - delta]])


class Constant(nn.Module):
    """A stand-in model: logits = scale * y_t + shift (the calls are recorded)."""

    def __init__(self, scale=0.0, shift=0.0):
        super().__init__()
        self.scale = scale
        self.shift = nn.Parameter(torch.tensor(float(shift)))
        self.calls = []

    def forward(self, y, t):
        self.calls.append((y.clone(), t.clone()))
        return self.scale * y + self.shift


class Oracle(nn.Module):
    """Logits that say Y_0 = y_0 with certainty (ignores its input but its shape)."""

    def __init__(self, y_0, magnitude=60.0):
        super().__init__()
        self.y_0 = y_0
        self.magnitude = magnitude
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, y, t):
        return self.magnitude * self.y_0 * (1 + self.dummy)  # dummy = 0: a real gradient path


def make(model=None, T=50, delta=0.05, size=4, channels=1):
    return BinaryDiffusion(model if model is not None else Constant(), image_size=size,
                           channels=channels, timesteps=T, delta=delta)


def random_signs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(shape, generator=g) < 0.5, 1.0, -1.0)


# ----------------------------------------------------------------------------- schedule (B1)

@pytest.mark.parametrize("delta", [0.001, 0.05, 0.2, 0.5])
def test_schedule_matches_powers_of_the_flip_matrix(delta):
    t = torch.arange(0, 200)
    p_replaced, p_same = schedule(t, delta)
    assert p_replaced.dtype == torch.float64 and p_same.dtype == torch.float64
    M = flip_matrix(delta)
    same = np.array([np.linalg.matrix_power(M, k)[0, 0] for k in range(200)])
    # the two float64 computations differ by rounding only (relative 1e-13 is generous)
    np.testing.assert_allclose(p_same.numpy(), same, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(p_replaced.numpy(), 2 * (1 - same), rtol=1e-12, atol=1e-15)
    assert p_replaced[0] == 0 and p_same[0] == 1
    assert p_same[1].item() == pytest.approx(1 - delta, abs=1e-15)


def test_schedule_reaches_fair_coins():
    # question (a): the probability of never having been replaced, (1 - 2 delta)^T, goes to 0
    p_replaced, p_same = schedule(torch.tensor([10_000]), 0.01)
    assert p_replaced.item() == pytest.approx(1.0, abs=1e-80)
    assert p_same.item() == pytest.approx(0.5, abs=1e-80)


@pytest.mark.parametrize("delta", [0.05, 0.2])
def test_closed_form_matches_simulated_flips(delta):
    """t steps of independent flips, simulated, against p_same(t) for every t (K = 2 * 30 checks)."""
    n, T = 200_000, 30
    g = torch.Generator().manual_seed(1)
    y_0 = torch.where(torch.rand(n, generator=g) < 0.3, 1.0, -1.0)
    y = y_0.clone()
    ever_replaced = torch.zeros(n, dtype=torch.bool)
    p_replaced, p_same = schedule(torch.arange(T + 1), delta)
    z = z_quantile(2 * T)
    for t in range(1, T + 1):
        # the handout's two-coin view of one step: replace with probability 2 delta by a fair coin
        replace = torch.rand(n, generator=g) < 2 * delta
        coin = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0)
        y = torch.where(replace, coin, y)
        ever_replaced |= replace
        for freq, p in ((ever_replaced.double().mean(), p_replaced[t]),
                        ((y == y_0).double().mean(), p_same[t])):
            sd = math.sqrt(p * (1 - p) / n)
            assert abs(freq - p) <= z * sd, f"t={t}: frequency {freq:.5f} vs closed form {p:.5f}"


def test_one_flip_step_is_a_flip_with_probability_delta():
    # the two-coin view and the flip view are the same step: P(change) = 2 delta * 1/2 = delta
    _, p_same = schedule(torch.tensor([1]), 0.07)
    assert 1 - p_same.item() == pytest.approx(0.07, abs=1e-15)


def test_buffers_are_float32_schedule_indexed_by_step():
    d = make(T=7, delta=0.1)
    p_replaced, p_same = schedule(torch.arange(8), 0.1)
    assert d.p_replaced.shape == (8,) and d.p_replaced.dtype == torch.float32
    torch.testing.assert_close(d.p_same, p_same.float(), rtol=0, atol=0)
    torch.testing.assert_close(d.p_replaced, p_replaced.float(), rtol=0, atol=0)
    assert set(dict(d.named_buffers())) == {"p_replaced", "p_same"}


@pytest.mark.parametrize("kwargs", [{"timesteps": 0}, {"delta": 0.0}, {"delta": 0.6}])
def test_constructor_rejects_bad_settings(kwargs):
    args = {"image_size": 4, "channels": 1, "timesteps": 5, "delta": 0.1, **kwargs}
    with pytest.raises(ValueError):
        BinaryDiffusion(Constant(), **args)


# ----------------------------------------------------------------------------- q_sample (B2)

def test_q_sample_follows_the_two_coin_rule():
    d = make(T=20, delta=0.05, size=8, channels=2)
    y_0 = random_signs((6, 2, 8, 8), 2)
    t = torch.tensor([1, 2, 5, 10, 19, 20])
    g = torch.Generator().manual_seed(3)
    u_r, u_c = torch.rand(y_0.shape, generator=g), torch.rand(y_0.shape, generator=g)
    y_t = d.q_sample(y_0, t, u_r, u_c)
    assert y_t.shape == y_0.shape and y_t.dtype == y_0.dtype
    replaced = u_r < d.p_replaced[t].reshape(-1, 1, 1, 1)
    expected = torch.where(replaced, torch.where(u_c < 0.5, 1.0, -1.0), y_0)
    assert torch.equal(y_t, expected)
    assert set(y_t.unique().tolist()) <= {-1.0, 1.0}


def test_q_sample_keeps_float64_and_draws_nothing():
    d = make(T=5)
    y_0 = random_signs((2, 1, 4, 4), 4).double()
    before = torch.random.get_rng_state()
    out = d.q_sample(y_0, torch.tensor([1, 5]), torch.rand(y_0.shape).double(),
                     torch.rand(y_0.shape).double())
    assert out.dtype == torch.float64
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    d.q_sample(y_0, torch.tensor([1, 5]), torch.full(y_0.shape, 0.3, dtype=torch.float64),
               torch.full(y_0.shape, 0.3, dtype=torch.float64))
    assert torch.equal(state, torch.random.get_rng_state()), "q_sample drew its own randomness"
    del before


@pytest.mark.parametrize("delta", [0.02, 0.1])
def test_q_sample_distribution_matches_t_steps(delta):
    """P(Y_t = Y_0) of one-shot samples vs the matrix power (K = 4 checks)."""
    T, n = 40, 100_000
    d = make(T=T, delta=delta, size=10)
    steps = [1, 5, 20, 40]
    z = z_quantile(len(steps))
    M = flip_matrix(delta)
    for s in steps:
        y_0 = random_signs((n // 100, 1, 10, 10), s)
        g = torch.Generator().manual_seed(100 + s)
        y_t = d.q_sample(y_0, torch.full((n // 100,), s), torch.rand(y_0.shape, generator=g),
                         torch.rand(y_0.shape, generator=g))
        p = np.linalg.matrix_power(M, s)[0, 0]
        freq = (y_t == y_0).double().mean().item()
        assert abs(freq - p) <= z * math.sqrt(p * (1 - p) / n), (s, freq, p)


# ----------------------------------------------------------------------------- posterior (B3)

def enumerated_posterior(y_t, y_0, t, delta):
    """P(Y_{t-1} = +1 | Y_t = y_t, Y_0 = y_0) by Bayes over the chain, float64 numpy."""
    M = flip_matrix(delta)
    idx = {1.0: 0, -1.0: 1}
    out = np.empty(y_t.shape)
    for pos in np.ndindex(y_t.shape):
        b, x, y = pos[0], idx[float(y_0[pos])], idx[float(y_t[pos])]
        prior = np.linalg.matrix_power(M, int(t[b]) - 1)[x]          # over Y_{t-1} in (+1, -1)
        joint = prior * M[:, y]                                      # P(Y_{t-1} = v, Y_t = y | x)
        out[pos] = joint[0] / joint.sum()
    return out


def posterior_formula(same_prev, delta, y_t, y_0):
    """(B3) as a differentiable float64 function of the float32 inputs (for the allowance)."""
    rho = torch.where(y_0 > 0, same_prev, 1 - same_prev)
    lp = torch.where(y_t > 0, 1 - delta, delta)
    lm = torch.where(y_t > 0, delta, 1 - delta)
    return rho * lp / (rho * lp + (1 - rho) * lm)


@pytest.mark.parametrize("delta,T", [(0.05, 50), (0.001, 1000), (0.3, 10)])
def test_posterior_matches_bayes_by_enumeration(delta, T):
    d = make(T=T, delta=delta, size=2, channels=2)
    t = torch.tensor([1, 2, 3, T // 2, T - 1, T])
    # every (y_t, y_0) pair appears for every t
    y_t = torch.tensor([1.0, 1.0, -1.0, -1.0]).reshape(1, 1, 2, 2).expand(6, 2, 2, 2).clone()
    y_0 = torch.tensor([1.0, -1.0, 1.0, -1.0]).reshape(1, 1, 2, 2).expand(6, 2, 2, 2).clone()
    got = d.q_posterior(y_t, y_0, t)
    assert got.shape == y_t.shape
    expected = enumerated_posterior(y_t.numpy(), y_0.numpy(), t.numpy(), delta)
    same_prev = d.p_same[t - 1].double().reshape(-1, 1, 1, 1).expand_as(y_t)
    tol = allowance(lambda s, dl: posterior_formula(s, dl, y_t, y_0),
                    [same_prev, torch.full_like(same_prev, delta)]).numpy()
    err = np.abs(got.double().numpy() - expected)
    assert np.all(err <= tol), f"largest error {err.max():.3g}, allowance there {tol.flat[err.argmax()]:.3g}"
    # at t = 1 the clean pixel is known exactly
    assert torch.equal(got[0], (y_0[0] > 0).to(got.dtype))


def test_posterior_for_both_signs_is_symmetric():
    d = make(T=30, delta=0.08, size=4)
    y_t, y_0 = random_signs((3, 1, 4, 4), 5), random_signs((3, 1, 4, 4), 6)
    t = torch.tensor([2, 15, 30])
    # flipping every sign swaps +1 and -1: P(+1 | -y, -x) = 1 - P(+1 | y, x)
    torch.testing.assert_close(d.q_posterior(-y_t, -y_0, t), 1 - d.q_posterior(y_t, y_0, t),
                               rtol=0, atol=4 * U)


# ----------------------------------------------------------------------------- model (B4)

def test_logits_to_probs_is_a_finite_sigmoid():
    x = torch.tensor([-1e4, -30.0, -1.0, 0.0, 1.0, 30.0, 1e4])
    p = logits_to_probs(x)
    assert torch.all(torch.isfinite(p)) and torch.all((p >= 0) & (p <= 1))
    torch.testing.assert_close(p.double(), 1 / (1 + torch.exp(-x.double())), rtol=2 * U, atol=0)


def test_reverse_probs_mixes_the_two_posteriors():
    d = make(T=20, delta=0.05, size=4, channels=1)
    y_t = random_signs((4, 1, 4, 4), 7)
    t = torch.tensor([1, 2, 10, 20])
    logits = torch.randn(y_t.shape) * 3
    q = d.reverse_probs(logits, y_t, t)
    ones = torch.ones_like(y_t)
    a = enumerated_posterior(y_t.numpy(), ones.numpy(), t.numpy(), 0.05)
    b = enumerated_posterior(y_t.numpy(), -ones.numpy(), t.numpy(), 0.05)
    h = torch.sigmoid(logits.double()).numpy()
    np.testing.assert_allclose(q.double().numpy(), h * a + (1 - h) * b, rtol=0, atol=64 * U)
    # a sure prediction gives back that posterior; at t = 1 Q is the prediction itself
    sure = d.reverse_probs(torch.full_like(y_t, 1e4), y_t, t)
    np.testing.assert_allclose(sure.double().numpy(), a, rtol=0, atol=64 * U)
    torch.testing.assert_close(q[0], torch.sigmoid(logits[0]), rtol=0, atol=4 * U)


# ----------------------------------------------------------------------------- loss (B5)

def kl_reference(p, q):
    """KL(Bern(p) || Bern(q)) elementwise, float64, 0 log 0 = 0."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = np.where(p > 0, p * np.log(p / q), 0.0)
        t2 = np.where(p < 1, (1 - p) * np.log((1 - p) / (1 - q)), 0.0)
    return t1 + t2


def loss_inputs(B=6, T=20, size=4, seed=8):
    y_0 = random_signs((B, 1, size, size), seed)
    g = torch.Generator().manual_seed(seed + 1)
    return y_0, torch.rand(y_0.shape, generator=g), torch.rand(y_0.shape, generator=g)


def test_loss_matches_the_kl_definition():
    T, delta = 20, 0.05
    model = Constant(scale=1.5, shift=0.3)
    d = make(model, T=T, delta=delta)
    y_0, u_r, u_c = loss_inputs(T=T)
    t = torch.tensor([1, 2, 5, 10, 19, 20])
    loss = d.p_loss(y_0, t, u_r, u_c)
    assert loss.dim() == 0
    y_t = d.q_sample(y_0, t, u_r, u_c)
    assert len(model.calls) == 1 and torch.equal(model.calls[0][0], y_t)
    assert torch.equal(model.calls[0][1], t)
    p = enumerated_posterior(y_t.numpy(), y_0.numpy(), t.numpy(), delta)
    ones = np.ones(y_t.shape)
    a = enumerated_posterior(y_t.numpy(), ones, t.numpy(), delta)
    b = enumerated_posterior(y_t.numpy(), -ones, t.numpy(), delta)
    h = 1 / (1 + np.exp(-(1.5 * y_t.numpy() + 0.3)))
    kl = kl_reference(p, h * a + (1 - h) * b)
    expected = kl.reshape(6, -1).sum(1).mean()
    # each of the 6 * 16 pixel terms is a difference of logs of numbers of order 1, each off by
    # a few float32 roundings (64 U per term, summed over 16 pixels, averaged over 6 images)
    assert loss.item() == pytest.approx(expected, abs=16 * 64 * U * (1 + float(np.abs(np.log(h)).max())))


def test_loss_is_nonnegative_and_zero_for_a_perfect_model():
    d = make(T=20, delta=0.05)
    y_0, u_r, u_c = loss_inputs()
    for _ in range(5):
        d.model = Constant(scale=float(torch.randn(())), shift=float(torch.randn(())))
        t = torch.randint(1, 21, (6,))
        assert d.p_loss(y_0, t, u_r, u_c).item() >= -16 * 64 * U
    d.model = Oracle(y_0)
    t = torch.tensor([1, 2, 7, 13, 19, 20])
    # Q equals the target posterior up to float32 rounding: 64 U per pixel, 16 pixels
    assert abs(d.p_loss(y_0, t, u_r, u_c).item()) <= 16 * 64 * U


def test_loss_at_t1_is_the_cross_entropy_of_predicting_y0():
    model = Constant(scale=-0.7, shift=0.4)
    d = make(model, T=20, delta=0.05)
    y_0, u_r, u_c = loss_inputs()
    t = torch.ones(6, dtype=torch.long)
    loss = d.p_loss(y_0, t, u_r, u_c)
    y_t = d.q_sample(y_0, t, u_r, u_c)
    logits = -0.7 * y_t + 0.4
    ce = F.binary_cross_entropy_with_logits(logits.double(), (y_0.double() + 1) / 2,
                                            reduction="sum") / 6
    assert loss.item() == pytest.approx(ce.item(), rel=64 * U)


@pytest.mark.parametrize("magnitude", [1e2, 1e4, 1e30])
def test_loss_is_finite_for_extreme_logits(magnitude):
    d = make(T=20, delta=0.05)
    y_0, u_r, u_c = loss_inputs()
    t = torch.tensor([1, 1, 2, 10, 20, 1])
    for sign in (1.0, -1.0):
        # logits that say the right clean pixel with certainty (sign +1), and the wrong one
        d.model = Oracle(sign * y_0, magnitude)
        loss = d.p_loss(y_0, t, u_r, u_c)
        loss.backward()
        assert torch.isfinite(loss), f"loss {loss.item()} for logits of size {magnitude}"
        assert torch.isfinite(d.model.dummy.grad)
        if sign < 0:  # certain and wrong at t = 1: cross-entropy = magnitude per wrong pixel
            assert loss.item() > 0


def test_loss_gradient_matches_float64_autograd():
    model = Constant(scale=0.9, shift=-0.2)
    d = make(model, T=20, delta=0.05)
    y_0, u_r, u_c = loss_inputs()
    t = torch.tensor([1, 3, 6, 9, 15, 20])
    d.p_loss(y_0, t, u_r, u_c).backward()
    got = model.shift.grad.item()
    y_t = d.q_sample(y_0, t, u_r, u_c).double()
    shift = torch.tensor(-0.2, dtype=torch.float64, requires_grad=True)
    ones = np.ones(y_t.shape)
    p = torch.from_numpy(enumerated_posterior(y_t.numpy(), y_0.numpy(), t.numpy(), 0.05))
    a = torch.from_numpy(enumerated_posterior(y_t.numpy(), ones, t.numpy(), 0.05))
    b = torch.from_numpy(enumerated_posterior(y_t.numpy(), -ones, t.numpy(), 0.05))
    h = torch.sigmoid(0.9 * y_t + shift)
    q = h * a + (1 - h) * b
    kl = torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p) - p * q.log() - (1 - p) * (1 - q).log()
    kl.reshape(6, -1).sum(1).mean().backward()
    assert got == pytest.approx(shift.grad.item(), abs=16 * 256 * U)


# ----------------------------------------------------------------------------- forward

def test_forward_draws_t_per_example_uniform_on_1_to_T():
    T = 5
    d = make(T=T)
    seen = []
    d.p_loss = lambda y_0, t, u_r, u_c: (seen.append((t, u_r, u_c)), torch.zeros(()))[1]
    y_0 = random_signs((400, 1, 4, 4), 9)
    d(y_0)
    t, u_r, u_c = seen[0]
    assert t.shape == (400,) and t.dtype == torch.int64
    assert int(t.min()) >= 1 and int(t.max()) <= T
    counts = torch.bincount(t, minlength=T + 1)[1:].double()
    # chi-square with T - 1 = 4 degrees of freedom: 45 is far beyond its 1 - 1e-6 quantile (~33)
    chi2 = (((counts - 80) ** 2) / 80).sum().item()
    assert chi2 < 45, counts
    assert u_r.shape == y_0.shape and u_c.shape == y_0.shape and not torch.equal(u_r, u_c)


def test_forward_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="expects images of shape"):
        make(size=4)(torch.ones(2, 1, 8, 8))


# ----------------------------------------------------------------------------- sampling (B6)

def test_p_sample_thresholds_the_uniforms_at_Q():
    model = Constant(scale=0.5, shift=-0.1)
    d = make(model, T=10, delta=0.1)
    y_t = random_signs((3, 1, 4, 4), 10)
    t = torch.full((3,), 6)
    u = torch.rand(y_t.shape)
    out = d.p_sample(y_t, t, u)
    q = d.reverse_probs(0.5 * y_t - 0.1, y_t, t)
    assert torch.equal(out, torch.where(u < q, 1.0, -1.0))
    assert out.dtype == y_t.dtype


def test_p_sample_frequencies_match_Q():
    """Without u: per-pixel frequencies over many draws vs Q (K = 16 pixels)."""
    d = make(Constant(scale=0.8, shift=0.2), T=10, delta=0.1)
    y_t = random_signs((1, 1, 4, 4), 11).expand(20_000, 1, 4, 4).clone()
    t = torch.full((20_000,), 4)
    freq = (d.p_sample(y_t, t) > 0).double().mean(0)
    q = d.reverse_probs(0.8 * y_t[:1] + 0.2, y_t[:1], t[:1])[0].double()
    z = z_quantile(16)
    assert torch.all((freq - q).abs() <= z * (q * (1 - q) / 20_000).sqrt())


def test_p_sample_loop_runs_t_from_T_down_to_1_and_returns_the_chain():
    model = Constant(scale=1.0)
    T = 6
    d = make(model, T=T, delta=0.1)
    y_T = random_signs((2, 1, 4, 4), 12)
    chain = d.p_sample_loop(y_T, return_chain=True)
    assert chain.shape == (T + 1, 2, 1, 4, 4)
    assert torch.equal(chain[0], y_T)
    assert [int(c[1][0]) for c in model.calls] == list(range(T, 0, -1))
    for k, (y, t) in enumerate(model.calls):
        assert torch.equal(y, chain[k]) and torch.equal(t, torch.full((2,), T - k))
    assert set(chain.unique().tolist()) <= {-1.0, 1.0}
    torch.manual_seed(3)
    final = d.p_sample_loop(y_T)
    torch.manual_seed(3)
    assert torch.equal(final, d.p_sample_loop(y_T, return_chain=True)[-1])


def test_sample_returns_binary_images_in_unit_range():
    d = make(Constant(scale=2.0), T=4, delta=0.2, size=4, channels=3)
    images = d.sample(5)
    assert images.shape == (5, 3, 4, 4)
    assert set(images.unique().tolist()) <= {0.0, 1.0}


def test_sample_starts_from_fair_coins():
    # with delta = 1/2 every step replaces every pixel: the model cannot matter, Q = 1/2
    d = make(Constant(scale=5.0), T=1, delta=0.5, size=16)
    images = d.sample(200)  # 51,200 pixels
    freq = images.double().mean().item()
    assert abs(freq - 0.5) <= z_quantile(1) * math.sqrt(0.25 / images.numel())


def test_helpers_map_between_ranges():
    x = torch.tensor([-1.0, -0.2, 0.0, 0.3, 1.0])
    assert torch.equal(binarize(x), torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0]))
    assert torch.equal(to_unit_range(torch.tensor([-1.0, 1.0])), torch.tensor([0.0, 1.0]))


# ----------------------------------------------------------------------------- training entry point

@pytest.mark.slow
def test_train_binary_writes_checkpoint_samples_curve_and_chains(tmp_path):
    import train_binary

    out = tmp_path / "run"
    train_binary.main(["--image_size", "8", "--unet_dim_mults", "1", "2", "--unet_dim", "8",
                       "--time_steps", "5", "--train_steps", "4", "--save_and_sample_every", "2",
                       "--num_samples", "4", "--batch_size", "8", "--threads", "1",
                       "--save_folder", str(out)])
    for name in ("model-2.pt", "model-4.pt", "sample-4.png", "loss.csv", "loss.png", "chains.png"):
        assert (out / name).is_file(), name
    ckpt = torch.load(out / "model-4.pt", weights_only=True)
    assert ckpt["config"]["delta"] == 0.03 and ckpt["config"]["time_steps"] == 5
    (out / "chains.png").unlink()
    train_binary.main(["--load_path", str(out / "model-4.pt"), "--visualize",
                       "--save_folder", str(out)])
    assert (out / "chains.png").is_file()


@pytest.mark.parametrize("argv", [["--delta", "0.7"], ["--image_size", "10"], ["--visualize"]])
def test_train_binary_rejects_bad_flags(argv):
    import train_binary

    with pytest.raises(SystemExit) as exit_:
        train_binary.parse_args(argv)
    assert exit_.value.code == 2
