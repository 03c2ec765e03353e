"""The benchmark's pieces on a tiny configuration: they run, and the two samplers agree."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import training_sampling as ts  # noqa: E402

TINY = ts.Config(image_size=8, channels=3, dim=8, dim_mults=(1, 2), batch_size=4, timesteps=3)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Ops this small gain nothing from threads, and on a busy machine every multi-threaded op
    # waits for a descheduled thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_diffusion():
    return ts.build_diffusion(TINY, "cpu").eval()


def test_diffusers_scheduler_uses_our_cosine_schedule(tiny_diffusion):
    scheduler = ts.diffusers_scheduler(TINY.timesteps)
    # diffusers rounds beta_j to float32 and forms alpha_j = 1 - beta_j: a relative error up to
    # EPS32 * beta_j / alpha_j (large where alpha is clipped to 0.001), plus about one rounding
    # per product of the float32 cumprod; ours has one rounding (float64 -> float32).
    alphas = ts.cosine_schedule(TINY.timesteps)
    per_step = ts.EPS32 * ((1 - alphas) / alphas + 2)
    bound = torch.cumsum(per_step, 0) + ts.EPS32
    ours = tiny_diffusion.alphas_cumprod.double()
    rel = (scheduler.alphas_cumprod.double() - ours).abs() / ours
    assert (rel <= bound).all(), (rel, bound)
    assert scheduler.timesteps.tolist() == list(reversed(range(TINY.timesteps)))


def test_ours_and_diffusers_give_the_same_images_for_the_same_noise(tiny_diffusion):
    check = ts.check_same_images(tiny_diffusion, ts.diffusers_scheduler(TINY.timesteps), 4)
    assert check["same"], check
    # The tolerance is float32-sized, far below what a modelling difference makes.
    assert check["tolerance"] < 1e-3


@pytest.mark.parametrize("change", [{"variance_type": "fixed_large"}, {"clip_sample": False}],
                         ids=["variance-beta", "no-x0-clipping"])
def test_the_check_rejects_a_different_sampler(tiny_diffusion, change):
    from diffusers import DDPMScheduler

    betas = (1.0 - ts.cosine_schedule(TINY.timesteps)).numpy()
    settings = {"clip_sample": True, "variance_type": "fixed_small", "prediction_type": "epsilon",
                **change}
    other = DDPMScheduler(num_train_timesteps=TINY.timesteps, trained_betas=betas, **settings)
    other.set_timesteps(TINY.timesteps)
    check = ts.check_same_images(tiny_diffusion, other, 4)
    assert not check["same"], check


def test_the_same_noise_really_reaches_both_samplers(tiny_diffusion):
    # Different seeds must give different images, else the agreement above would be vacuous.
    scheduler = ts.diffusers_scheduler(TINY.timesteps)
    shape = (4, TINY.channels, TINY.image_size, TINY.image_size)

    def theirs(x_T, generator):
        return ts.diffusers_sample(tiny_diffusion.model, scheduler, x_T, generator)

    a = ts.sample_with_seed(theirs, shape, 0, "cpu")
    b = ts.sample_with_seed(theirs, shape, 1, "cpu")
    assert (a - b).abs().max() > 0.01


def test_speed_functions_report_positive_rates():
    steps = ts.training_steps_per_second(TINY, "cpu", steps=1, warmup=1, repeats=1)
    sampling = ts.sampling_images_per_second(TINY, "cpu", warmup=0, repeats=1, check_batch=2)
    assert steps > 0 and sampling["ours"] > 0 and sampling["diffusers"] > 0
    assert sampling["ratio"] == pytest.approx(sampling["ours"] / sampling["diffusers"])
    assert sampling["check"]["same"]
    overhead = ts.sampler_overhead_ms(TINY, "cpu", repeats=1)
    assert overhead["ours"] > 0 and overhead["diffusers"] > 0


def test_trainer_rows_show_the_path_in_use_and_the_fallback_on_the_cpu():
    eager = ts.trainer_steps_per_second(TINY, "cpu", "off", steps=1, warmup=1, repeats=1)
    assert eager["steps_per_s"] > 0 and eager["path"] == "off" and eager["failure"] is None
    messages = []
    graphs = ts.trainer_steps_per_second(TINY, "cpu", "graphs", steps=1, warmup=1, repeats=1,
                                         log=messages.append)
    assert graphs["steps_per_s"] > 0 and graphs["path"] == "off"
    assert "CUDA graphs need a CUDA device" in graphs["failure"]
    assert len(messages) == 1


def test_fast_sampler_row_and_fid_generation_on_the_cpu():
    sampling = ts.sampling_images_per_second(TINY, "cpu", warmup=0, repeats=1, check_batch=2,
                                             fast="graphs", log=lambda message: None)
    assert sampling["fast"] > 0 and sampling["fast_path"] == "off"
    assert "CUDA" in sampling["fast_failure"]
    assert sampling["fast_ratio"] == pytest.approx(sampling["fast"] / sampling["diffusers"])
    fid = ts.fid_generation_seconds(TINY, "cpu", "off", num_images=10, batch_size=4, repeats=1)
    assert fid["seconds"] > 0 and fid["path"] == "off"


def test_the_report_has_every_row(monkeypatch, capsys):
    monkeypatch.setattr(ts, "COLAB", TINY)
    status = ts.main(["--device", "cpu", "--repeats", "1", "--train_steps", "1",
                      "--fid_images", "6", "--fid_batch", "4"])
    out = capsys.readouterr().out
    assert status == 0
    for label in ("training, bare eager step", "training, our trainer (--fast auto)",
                  "training, fast path (--fast graphs)", "sampling, ours (eager)",
                  "sampling, ours (--fast graphs)", "sampling, diffusers DDPMScheduler",
                  "ratio ours (--fast graphs) / diffusers", "FID generation, 6 images, batch <= 4"):
        assert label in out, out
    assert "fell back to eager: RuntimeError: CUDA graphs need a CUDA device" in out
    assert "x bare eager" in out


def test_training_rates_come_from_one_interleaved_run():
    rates = ts.training_rates(TINY, "cpu", ("off", "graphs"), steps=1, repeats=2,
                              log=lambda message: None)
    assert rates["bare"] > 0 and rates["noise"] >= 0
    assert rates["off"]["path"] == "off" and rates["off"]["failure"] is None
    assert rates["graphs"]["path"] == "off" and "CUDA" in rates["graphs"]["failure"]
    for mode in ("off", "graphs"):
        assert rates[mode]["ratio"] == pytest.approx(rates[mode]["steps_per_s"] / rates["bare"])
