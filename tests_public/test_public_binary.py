"""Part 2, binary_diffusion.py: each function against the reference's stored outputs.

Run one function's tests with e.g. `pytest tests_public -k q_posterior`. The expected values come
from fixtures/public_binary.npz (written by fixtures/generate_binary.py from the staff reference).
"""

import numpy as np
import pytest
import torch
from binary_helpers import FIXTURES, FixedUniforms, tiny_logits
from public_helpers import assert_matches, student_code, t_tensor

CHANNELS, IMAGE_SIZE = 2, 5

# Tolerances. Probabilities: a correct solution may compute in float32 from the float32 buffers,
# or in float64; the posterior's inputs are rounded relative 6e-8, amplified at most 1 / (1 - rho)
# = 20 times for these deltas, so values agree to about 1e-6; bugs move them by 1e-2 or more.
PROB_ATOL = 1e-5
# Losses are sums of 50 pixel terms of order 1 (each good to ~1e-6 relative) over 6 images.
LOSS_RTOL, LOSS_ATOL = 1e-4, 1e-5
# Schedules: float32 arithmetic gives relative ~t * 6e-8 on (1 - 2 delta)^t, and 1 - that
# loses at most 6e-8 / p_replaced(1) = 3e-5 relative at delta = 0.001.
SCHED_RTOL, SCHED_ATOL = 1e-4, 1e-9


@pytest.fixture(scope="module")
def data():
    with np.load(FIXTURES) as f:
        return {key: f[key] for key in f.files}


def make(bdm, model, timesteps=50, delta=0.05):
    with student_code("schedule"):
        return bdm.BinaryDiffusion(model, image_size=IMAGE_SIZE, channels=CHANNELS,
                                   timesteps=timesteps, delta=delta)


def tensors(*arrays):
    return [torch.from_numpy(np.asarray(a)) for a in arrays]


# ----------------------------------------------------------------------------- schedule

@pytest.mark.parametrize("delta,timesteps", [(0.05, 50), (0.2, 10), (0.001, 1000)])
def test_schedule_matches_reference(bdm, data, delta, timesteps):
    with student_code("schedule"):
        out = bdm.schedule(torch.arange(timesteps + 1), delta)
    if not isinstance(out, tuple) or len(out) != 2:
        pytest.fail("schedule: return a tuple (p_replaced, p_same)", pytrace=False)
    key = f"schedule/{delta}-{timesteps}"
    assert_matches(f"schedule (delta={delta}, t=0..{timesteps}): p_replaced", out[0],
                   data[f"{key}/p_replaced"], SCHED_RTOL, SCHED_ATOL,
                   "a pixel escapes replacement at one step with probability 1 - 2 delta "
                   "(not 1 - delta), independently at each of the t steps.")
    assert_matches(f"schedule (delta={delta}, t=0..{timesteps}): p_same", out[1],
                   data[f"{key}/p_same"], SCHED_RTOL, SCHED_ATOL,
                   "P(Y_t = Y_0): never replaced, or replaced by a coin that landed on Y_0 "
                   "(probability 1/2).")


def test_buffers_are_float32_indexed_by_step(bdm, data):
    d = make(bdm, torch.nn.Identity(), timesteps=50)
    for name in ("p_replaced", "p_same"):
        value = getattr(d, name)
        assert tuple(value.shape) == (51,) and value.dtype == torch.float32, (
            f"BinaryDiffusion: buffer {name} should be float32 of shape (T + 1,) = (51,), got "
            f"{value.dtype} {tuple(value.shape)}")


# ----------------------------------------------------------------------------- model output

def test_logits_to_probs(bdm, data):
    with student_code("logits_to_probs"):
        out = bdm.logits_to_probs(torch.from_numpy(data["probs/logits"]))
    assert_matches("logits_to_probs (logits of size up to 1e4)", out, data["probs/out"],
                   0.0, 1e-6, "written question 8c: the activation must map any real number into "
                   "[0, 1] without overflow (no NaN at +-1e4).")


# ----------------------------------------------------------------------------- q_sample

def test_q_sample_matches_reference(bdm, data):
    d = make(bdm, tiny_logits(data, "m50"))
    y0, t, u_r, u_c = tensors(data["q/y0"], data["q/t"], data["q/u_replace"], data["q/u_coin"])
    with student_code("q_sample"):
        out = d.q_sample(y0, t, u_r, u_c)
    assert_matches(f"q_sample (T=50, t={data['q/t'].tolist()})", out, data["q_sample/out"], 0, 0,
                   "replace where u_replace < p_replaced[t] (per example t); a replaced pixel is "
                   "+1 where u_coin < 1/2; all other pixels keep y_0.")


# ----------------------------------------------------------------------------- q_posterior

@pytest.mark.parametrize("delta,timesteps", [(0.05, 50), (0.2, 10)])
def test_q_posterior_matches_reference(bdm, data, delta, timesteps):
    d = make(bdm, torch.nn.Identity(), timesteps=timesteps, delta=delta)
    t = data[f"posterior/{delta}/t"]
    y_t, y_0, tt = tensors(data["posterior/y_t"], data["posterior/y_0"], t)
    with student_code("q_posterior"):
        out = d.q_posterior(y_t, y_0, tt)
    assert_matches(f"q_posterior (T={timesteps}, delta={delta}, t={t.tolist()}; the last axis "
                   f"holds (y_t, y_0) = (+,+), (+,-), (-,+), (-,-))", out,
                   data[f"posterior/{delta}/out"], 0, PROB_ATOL,
                   "the prior of Y_{t-1} comes from p_same at step t - 1 (not t), for y_0 = +1 "
                   "and y_0 = -1 alike; the likelihood of y_t is 1 - delta or delta.")


# ----------------------------------------------------------------------------- reverse_probs

def test_reverse_probs_matches_reference(bdm, data):
    d = make(bdm, torch.nn.Identity())
    logits, y_t, t = tensors(data["probs/logits"], data["reverse/y_t"], data["reverse/t"])
    with student_code("reverse_probs"):
        out = d.reverse_probs(logits, y_t, t)
    assert_matches(f"reverse_probs (T=50, t={data['reverse/t'].tolist()})", out,
                   data["reverse/out"], 0, PROB_ATOL,
                   "mix q_posterior(y_t, +1, t) and q_posterior(y_t, -1, t) with weights "
                   "sigmoid(logits) and 1 - sigmoid(logits).")


# ----------------------------------------------------------------------------- p_loss

def test_p_loss_matches_reference(bdm, data):
    d = make(bdm, tiny_logits(data, "m50"))
    y0, t, u_r, u_c = tensors(data["q/y0"], data["q/t"], data["q/u_replace"], data["q/u_coin"])
    with student_code("p_loss"), torch.no_grad():
        loss = d.p_loss(y0, t, u_r, u_c)
    assert_matches(f"p_loss (T=50, t={data['q/t'].tolist()})", loss, data["p_loss/out"],
                   LOSS_RTOL, LOSS_ATOL,
                   "KL(target || model) = P log(P/Q) + (1-P) log((1-P)/(1-Q)), summed over the "
                   "pixels of an image, averaged over the batch (not averaged over pixels).")


def test_p_loss_at_t1_is_the_cross_entropy(bdm, data):
    d = make(bdm, tiny_logits(data, "m50"))
    y0, _, u_r, u_c = tensors(data["q/y0"], data["q/t"], data["q/u_replace"], data["q/u_coin"])
    with student_code("p_loss"), torch.no_grad():
        loss = d.p_loss(y0, torch.ones(6, dtype=torch.long), u_r, u_c)
    assert_matches("p_loss (T=50, t=1 for every image)", loss, data["p_loss/t1"],
                   LOSS_RTOL, LOSS_ATOL,
                   "at t = 1 the target is y_0 itself: the loss is -log of the model's "
                   "probability of y_0 (0 log 0 = 0 for the other outcome).")


def test_p_loss_is_finite_for_extreme_logits(bdm, data):
    class Sure(torch.nn.Module):
        """Certain of the wrong clean pixel: logits -1e4 * y_t (y_t = y_0 at t = 1 mostly)."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(1.0))

        def forward(self, y, t):
            return -1e4 * y * self.w

    d = make(bdm, Sure())
    y0, _, u_r, u_c = tensors(data["q/y0"], data["q/t"], data["q/u_replace"], data["q/u_coin"])
    t = t_tensor([1, 1, 2, 3, 25, 50])
    with student_code("p_loss"):
        loss = d.p_loss(y0, t, u_r, u_c)
    if not torch.isfinite(loss):
        pytest.fail(f"p_loss (logits -1e4 * y_t, t={t.tolist()}): loss is {loss.item()}; take "
                    "logs in log space (F.logsigmoid, torch.logaddexp, torch.xlogy), never "
                    "torch.log of a probability that rounded to 0.", pytrace=False)
    loss.backward()
    assert torch.isfinite(d.model.w.grad), "p_loss: the gradient is not finite for extreme logits"


# ----------------------------------------------------------------------------- forward

def test_forward_draws_t_per_example_in_1_to_T(bdm, data, monkeypatch):
    d = make(bdm, tiny_logits(data, "m5"), timesteps=5)
    seen = []

    def fake_p_loss(y_0, t, u_replace, u_coin):
        seen.append((t, u_replace, u_coin))
        return torch.zeros(())

    monkeypatch.setattr(d, "p_loss", fake_p_loss)
    y0 = torch.where(torch.rand(400, CHANNELS, IMAGE_SIZE, IMAGE_SIZE) < 0.5, 1.0, -1.0)
    with student_code("forward"):
        d(y0)
    if len(seen) != 1:
        pytest.fail(f"forward: should call self.p_loss once, called it {len(seen)} times",
                    pytrace=False)
    t, u_r, u_c = seen[0]
    assert isinstance(t, torch.Tensor) and t.dtype == torch.int64 and tuple(t.shape) == (400,), (
        "forward: t should be a (B,) int64 tensor")
    values = sorted(set(t.tolist()))
    assert values == [1, 2, 3, 4, 5], (
        f"forward (T=5, B=400): t should take every value 1..5 (one draw per example), got "
        f"{values}; torch.randint(low, high) excludes high")
    for name, u in (("u_replace", u_r), ("u_coin", u_c)):
        assert tuple(u.shape) == tuple(y0.shape) and 0 <= float(u.min()) and float(u.max()) < 1, (
            f"forward: {name} should be uniforms of the images' shape")


# ----------------------------------------------------------------------------- sampling

@pytest.mark.parametrize("step", [1, 2, 25, 50])
def test_p_sample_matches_reference(bdm, data, step):
    d = make(bdm, tiny_logits(data, "m50"))
    y_t, u = tensors(data["p_sample/y_t"], data[f"p_sample/{step}/u"])
    with student_code("p_sample"):
        out = d.p_sample(y_t, torch.full((4,), step, dtype=torch.long), u)
    assert_matches(f"p_sample (T=50, t={step}, given u)", out, data[f"p_sample/{step}/out"], 0, 0,
                   "return samples in {-1, +1}: +1 where u < Q_t(y_t) = reverse_probs(model(y_t, "
                   "t), y_t, t), else -1.")


def test_p_sample_loop_matches_reference(bdm, data, monkeypatch):
    model = tiny_logits(data, "m8")
    d = make(bdm, model, timesteps=8, delta=0.1)
    FixedUniforms(monkeypatch, bdm, list(data["loop/u"]))
    with student_code("p_sample_loop"):
        chain = d.p_sample_loop(torch.from_numpy(data["loop/y_T"]), return_chain=True)
    steps = [int(t[0]) for t in model.calls]
    assert steps == list(range(8, 0, -1)), (
        f"p_sample_loop (T=8): the model should see t = 8, 7, ..., 1 in this order, saw {steps}")
    assert_matches("p_sample_loop (T=8, return_chain=True)", chain, data["loop/chain"], 0, 0,
                   "the chain is Y_T, Y_{T-1}, ..., Y_0: (T + 1, B, C, H, W), starting with y_T.")


def test_sample_matches_reference(bdm, data, monkeypatch):
    """Y_T must be fair coins (however drawn), passed to p_sample_loop, the result mapped to {0, 1}."""
    d = make(bdm, tiny_logits(data, "m8"), timesteps=8, delta=0.1)
    seen = []

    def p_sample_loop(y_T, return_chain=False):
        seen.append(y_T)
        return y_T

    monkeypatch.setattr(d, "p_sample_loop", p_sample_loop)
    with student_code("sample"):
        out = d.sample(64)
    if len(seen) != 1:
        pytest.fail(f"sample(64): should call self.p_sample_loop once, called it {len(seen)} "
                    "times", pytrace=False)
    y_T = seen[0].double()
    shape = (64, CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
    assert tuple(y_T.shape) == shape, f"sample(64): Y_T should have shape {shape}, got " \
                                      f"{tuple(y_T.shape)}"
    assert bool(((y_T == 1) | (y_T == -1)).all()), "sample: Y_T should hold only -1 and +1"
    # fair coins: the fraction of +1 is within 5 standard deviations of 1/2 (false alarm < 1e-6)
    frac = float((y_T > 0).double().mean())
    assert abs(frac - 0.5) <= 5 * (0.25 / y_T.numel()) ** 0.5, (
        f"sample: {100 * frac:.1f} % of Y_T is +1; fair coins give 50 %")
    assert_matches("sample(64) with p_sample_loop returning Y_T", out, ((y_T + 1) / 2).numpy(),
                   0, 0, "map the result of p_sample_loop from {-1, +1} to {0, 1} "
                         "(to_unit_range).")
