"""p_sample, p_sample_loop and sample: the reverse process, on a tiny fixed noise model.

Where noise is involved, every way of drawing it (self.noise_like, torch.randn, torch.randn_like) is
replaced by known tensors from the fixtures, so any correct solution reproduces the reference.
"""

import pytest
import torch
from public_helpers import (
    OUT_ATOL,
    OUT_RTOL,
    FixedNoise,
    assert_matches,
    check,
    student_code,
    submission_frames,
    tiny_model,
)

CHANNELS, IMAGE_SIZE = 2, 5
P_SAMPLE_HINT = ("predict the noise with self.model(x, t), form x0_hat (eq. 4) and clamp it to "
                 "[-1, 1], take the posterior mean at (x0_hat, x_t) (eq. 3)")


def make(ddpm, model, timesteps):
    with student_code("Diffusion.__init__"):
        return ddpm.Diffusion(model, image_size=IMAGE_SIZE, channels=CHANNELS, timesteps=timesteps)


def full(value, batch):
    return torch.full((batch,), value, dtype=torch.long)


def test_p_sample_adds_no_noise_at_the_last_step(ddpm, ref):
    d = make(ddpm, tiny_model(ref, "m50"), 50)
    x = torch.from_numpy(ref["p_sample/x"])
    outs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        with student_code("p_sample"):
            outs.append(d.p_sample(x, full(0, 4), 0))
    assert_matches("p_sample (T=50, t_index=0), two calls with different seeds", outs[1],
                   outs[0].detach().numpy(), 0, 0,
                   "at t_index = 0 no noise is added, so the result must not depend on the seed.")
    assert_matches("p_sample (T=50, t_index=0)", outs[0], ref["p_sample/0/out"], OUT_RTOL, OUT_ATOL,
                   f"{P_SAMPLE_HINT}; at t_index = 0 return the mean (no noise).")


@pytest.mark.parametrize("t_index", [1, 25, 49])
def test_p_sample_with_known_noise_matches_reference(ddpm, ref, monkeypatch, t_index):
    d = make(ddpm, tiny_model(ref, "m50"), 50)
    x = torch.from_numpy(ref["p_sample/x"])
    noise = FixedNoise(monkeypatch, ddpm, [ref[f"p_sample/{t_index}/z"]])
    with student_code("p_sample"):
        got = d.p_sample(x, full(t_index, 4), t_index)
    check(noise.draws,
          f"p_sample (t_index={t_index}): drew no noise (self.noise_like, torch.randn, randn_like, "
          f"normal or Tensor.normal_); add sqrt(variance) * z for t_index > 0")
    assert_matches(f"p_sample (T=50, t_index={t_index}, known z)", got,
                   ref[f"p_sample/{t_index}/out"], OUT_RTOL, OUT_ATOL,
                   f"{P_SAMPLE_HINT}, and add sqrt(posterior variance) * z.")


def run_loop(ddpm, ref, monkeypatch, return_all=False):
    model = tiny_model(ref, "m20")
    d = make(ddpm, model, 20)
    FixedNoise(monkeypatch, ddpm, list(ref["loop/z"]))
    with student_code("p_sample_loop"):
        out = d.p_sample_loop(torch.from_numpy(ref["loop/x_T"]), return_all_timesteps=return_all)
    return out, model


def test_p_sample_loop_calls_the_model_at_T_minus_1_down_to_0(ddpm, ref, monkeypatch):
    _, model = run_loop(ddpm, ref, monkeypatch)
    seen = [sorted(set(t.tolist())) for t, _ in model.calls]
    expected = [[i] for i in range(19, -1, -1)]
    check(seen == expected,
          f"p_sample_loop (T=20): the model should be called once per step with t filled with "
          f"19, 18, ..., 0 (one value per call, shown as lists); got {seen}")


def test_p_sample_loop_returns_images_in_0_1(ddpm, ref, monkeypatch):
    out, _ = run_loop(ddpm, ref, monkeypatch)
    check(isinstance(out, torch.Tensor) and tuple(out.shape) == (3, CHANNELS, IMAGE_SIZE, IMAGE_SIZE),
          f"p_sample_loop (T=20, B=3): expected shape (3, {CHANNELS}, {IMAGE_SIZE}, {IMAGE_SIZE}), got "
          f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    check(out.min() >= 0 and out.max() <= 1,
          f"p_sample_loop: values must be in [0, 1] (map with unnormalize); got "
          f"[{float(out.min()):.3g}, {float(out.max()):.3g}]")


def test_p_sample_loop_with_known_noise_matches_reference(ddpm, ref, monkeypatch):
    out, _ = run_loop(ddpm, ref, monkeypatch)
    assert_matches("p_sample_loop (T=20, B=3, known z)", out, ref["loop/out"], OUT_RTOL, OUT_ATOL,
                   "loop t_index = T-1, ..., 0, feed each p_sample result into the next step, and "
                   "map the final state to [0, 1] with unnormalize.")


def test_p_sample_loop_returns_all_timesteps_in_order(ddpm, ref, monkeypatch):
    out, _ = run_loop(ddpm, ref, monkeypatch, return_all=True)
    assert_matches("p_sample_loop (T=20, B=3, return_all_timesteps=True, known z)", out,
                   ref["loop/all"], OUT_RTOL, OUT_ATOL,
                   "stack the start x_T and the state after every step: shape (T + 1, B, C, H, W), "
                   "each mapped to [0, 1].")


def test_sample_returns_a_batch_of_images_in_0_1(ddpm, ref):
    d = make(ddpm, tiny_model(ref, "m20"), 20)
    with student_code("sample"):
        out = d.sample(3)
    check(isinstance(out, torch.Tensor) and tuple(out.shape) == (3, CHANNELS, IMAGE_SIZE, IMAGE_SIZE),
          f"sample(3) with channels={CHANNELS}, image_size={IMAGE_SIZE}: expected shape "
          f"(3, {CHANNELS}, {IMAGE_SIZE}, {IMAGE_SIZE}), got "
          f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    check(out.min() >= 0 and out.max() <= 1,
          "sample: values must be in [0, 1]")


def test_sample_with_known_noise_matches_reference(ddpm, ref, monkeypatch):
    d = make(ddpm, tiny_model(ref, "m20"), 20)
    FixedNoise(monkeypatch, ddpm, list(ref["sample/z"]))
    with student_code("sample"):
        out = d.sample(3)
    assert_matches("sample(3) (T=20, known z)", out, ref["sample/out"], OUT_RTOL, OUT_ATOL,
                   "start from standard normal noise of shape (B, C, H, W) and return p_sample_loop's "
                   "result.")


def test_sample_keeps_every_tensor_on_the_model_device(ddpm, ref):
    # PyTorch's "meta" device stands in for a GPU: mixing it with a CPU tensor raises an error, as
    # mixing cuda and cpu would. Meta tensors hold no values, so use the int t_index in branches.
    d = make(ddpm, tiny_model(ref, "m20"), 20).to("meta")
    try:
        out, error = d.sample(2), None
    except Exception as err:  # noqa: BLE001 - judged below, outside the except clause
        out, error = None, err
    if isinstance(error, NotImplementedError):
        if "Meta" in str(error):  # an operation PyTorch cannot run on meta: no verdict possible
            pytest.skip(f"sample uses an operation without meta support: {error}")
        with student_code("sample"):
            raise error
    if isinstance(error, RuntimeError):
        pytest.fail("\n".join(
            [f"sample on a model on another device (meta) failed: {error}"]
            + [f"  at {w}" for w in submission_frames(error)]
            + ["  create every tensor on the model's device, e.g. torch.full(..., "
               "device=img.device) and self.noise_like(shape, device)"]), pytrace=False)
    if error is not None:
        with student_code("sample"):
            raise error
    check(out.device.type == "meta",
          f"sample: output is on {out.device}, not the model's device")
