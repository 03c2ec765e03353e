"""q_sample, p_loss and forward: the training side, on a tiny fixed noise model."""

import pytest
import torch
from public_helpers import (
    OUT_ATOL,
    OUT_RTOL,
    assert_matches,
    check,
    student_code,
    t_tensor,
    tiny_model,
)

CHANNELS, IMAGE_SIZE = 2, 5


def make(ddpm, model, timesteps, loss_type="l1"):
    with student_code("Diffusion.__init__"):
        return ddpm.Diffusion(model, image_size=IMAGE_SIZE, channels=CHANNELS,
                              timesteps=timesteps, loss_type=loss_type)


def inputs(ref):
    return (torch.from_numpy(ref["q_sample/x0"]), t_tensor(ref["q_sample/t"]),
            torch.from_numpy(ref["q_sample/noise"]))


def test_q_sample_matches_reference(ddpm, ref):
    d = make(ddpm, tiny_model(ref, "m50"), 50)
    x0, t, noise = inputs(ref)
    with student_code("q_sample"):
        got = d.q_sample(x0, t, noise)
    assert_matches(f"q_sample (T=50, cosine, t={t.tolist()})", got, ref["q_sample/out"],
                   OUT_RTOL, OUT_ATOL,
                   "x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise, with abar_t = alphas_cumprod[t] "
                   "for each example's own t, and the given noise.")


@pytest.mark.parametrize("loss_type", ["l1", "l2"])
def test_p_loss_matches_reference(ddpm, ref, loss_type):
    d = make(ddpm, tiny_model(ref, "m50"), 50, loss_type)
    x0, t, noise = inputs(ref)
    with student_code("p_loss"):
        got = d.p_loss(x0, t, noise)
    if isinstance(got, torch.Tensor) and got.dim() != 0:
        pytest.fail(f"p_loss (loss_type={loss_type!r}): expected a scalar (0-dim) tensor, got shape "
                    f"{tuple(got.shape)}; take the mean over all elements", pytrace=False)
    kind = "mean absolute" if loss_type == "l1" else "mean squared"
    assert_matches(f"p_loss (T=50, loss_type={loss_type!r}, t={t.tolist()})", got,
                   ref[f"p_loss/{loss_type}"], OUT_RTOL, OUT_ATOL,
                   f"loss_type {loss_type!r} is the {kind} difference between the given noise and "
                   f"self.model(q_sample(x_0, t, noise), t).")


def test_forward_rejects_images_of_the_wrong_shape(ddpm, ref):
    d = make(ddpm, tiny_model(ref, "m5"), 5)
    for shape in [(4, CHANNELS + 1, IMAGE_SIZE, IMAGE_SIZE), (4, CHANNELS, IMAGE_SIZE + 1, IMAGE_SIZE + 1),
                  (CHANNELS, IMAGE_SIZE, IMAGE_SIZE)]:
        try:
            d(torch.zeros(shape))
        except ValueError:
            continue  # what the docstring asks for
        except Exception as err:  # noqa: BLE001 - reported like any error of the student's code
            with student_code("forward"):
                raise err from None
        pytest.fail(f"forward (channels={CHANNELS}, image_size={IMAGE_SIZE}): images of shape "
                    f"{shape} should raise ValueError (see the docstring); nothing was raised",
                    pytrace=False)


def test_forward_returns_p_loss_of_the_given_noise_at_the_drawn_t(ddpm, ref):
    model = tiny_model(ref, "m5")
    d = make(ddpm, model, 5)
    x0 = torch.rand(8, CHANNELS, IMAGE_SIZE, IMAGE_SIZE) * 2 - 1
    noise = torch.randn_like(x0)
    with student_code("forward"):
        loss = d(x0, noise)
    check(isinstance(loss, torch.Tensor) and loss.dim() == 0,
          f"forward: expected a scalar (0-dim) tensor, got "
          f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__}")
    check(loss.requires_grad,
          "forward: the loss must stay connected to the model (no .item(), no no_grad)")
    check(model.calls,
          "forward: the model was never called")
    t = model.calls[0][0]
    with student_code("p_loss"):
        expected = d.p_loss(x0, t, noise)
    assert_matches(f"forward (T=5, B=8): loss vs p_loss(x_0, t, noise) at the t it drew ({t.tolist()})",
                   loss, expected.detach().numpy(), 1e-5, 1e-6,
                   "forward must use the noise it is given (draw its own only when noise is None).")


def test_forward_draws_noise_when_none_is_given(ddpm, ref):
    d = make(ddpm, tiny_model(ref, "m5"), 5)
    x0 = torch.rand(8, CHANNELS, IMAGE_SIZE, IMAGE_SIZE) * 2 - 1
    with student_code("forward"):
        loss = d(x0)
    check(isinstance(loss, torch.Tensor) and loss.dim() == 0 and torch.isfinite(loss),
          f"forward(x_0) without noise: expected a finite scalar tensor, got {loss!r}")


def test_forward_draws_t_uniformly_and_independently_per_example(ddpm, ref):
    timesteps, batch = 5, 2000
    model = tiny_model(ref, "m5")
    d = make(ddpm, model, timesteps)
    x0 = torch.rand(batch, CHANNELS, IMAGE_SIZE, IMAGE_SIZE) * 2 - 1
    with student_code("forward"):
        d(x0, torch.randn_like(x0))
    check(model.calls, "forward: the model was never called")
    t = model.calls[0][0]
    check(0 <= t.min() and t.max() <= timesteps - 1,
          f"forward (T={timesteps}): t must lie in [0, T-1] (code index); got values from "
          f"{int(t.min())} to {int(t.max())}")
    counts = torch.bincount(t, minlength=timesteps).tolist()
    # Each count is Binomial(2000, 1/5): 400 +- 17.9; 100 is more than 5 standard deviations.
    check(all(abs(c - batch / timesteps) < 100 for c in counts),
          f"forward (T={timesteps}, B={batch}): t should be uniform on {{0, ..., T-1}}, one draw per "
          f"example; counts of each index: {counts}")
