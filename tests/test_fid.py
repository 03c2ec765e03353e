"""FID with clean-fid, offline: a small fixed feature extractor stands in for Inception-v3.

The extractor sees exactly what Inception would (clean-fid's preprocessing: uint8, RGB, PIL
bicubic to 299x299, values in [0, 255]); only the network differs.
"""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import main
from diffusion import unnormalize
from fid import FIDEvaluator, FIDUnavailableError, inception_feature_extractor
from image_data import load_dataset
from trainer import Trainer

INCEPTION_FILE = Path("/tmp/inception-2015-12-05.pt")  # where clean-fid keeps the weights


class PooledIntensity(nn.Module):
    """(B, 3, 299, 299) in [0, 255] -> (B, 12): mean of each channel over a 2x2 grid of cells."""

    def forward(self, x):
        return F.adaptive_avg_pool2d(x / 255.0, 2).flatten(1)


class CountingReference:
    """Reference images with a call counter."""

    def __init__(self, images):
        self.images, self.calls = images, 0

    def __call__(self):
        self.calls += 1
        return self.images


def digits(n, start=0, size=8):
    dataset, _ = load_dataset("digits", size)
    return unnormalize(dataset.tensors[0][start:start + n])


def evaluator(tmp_path, reference, key="digits-8", num_samples=8):
    return FIDEvaluator(reference, tmp_path / "ref.npz", key, num_samples=num_samples,
                        batch_size=32, feat_model=PooledIntensity())


def tiny_diffusion():
    return main.build_diffusion(dict(unet_dim=8, unet_dim_mults=[1, 2], channels=1, image_size=8,
                                     time_steps=5, schedule="cosine", loss="l1"))


def test_fid_of_the_reference_images_against_themselves_is_zero(tmp_path):
    images = digits(64)
    fid_eval = evaluator(tmp_path, CountingReference(images))
    mu, sigma = fid_eval.reference_statistics()
    # Same features, same statistics: only sqrtm's rounding remains, relative to the scale of
    # the terms (float64, 12x12 covariance).
    scale = np.trace(sigma) + mu @ mu
    assert abs(fid_eval.fid_of_images(images)) < 1e-8 * scale


def test_fid_ranks_noise_worse_than_other_digits(tmp_path):
    fid_eval = evaluator(tmp_path, CountingReference(digits(128)))
    other_digits = fid_eval.fid_of_images(digits(128, start=128))
    noise = fid_eval.fid_of_images(torch.rand(128, 1, 8, 8))
    assert 0 < other_digits < noise


def test_reference_statistics_are_computed_once_and_cached_on_disk(tmp_path):
    reference = CountingReference(digits(64))
    fid_eval = evaluator(tmp_path, reference)
    diffusion = tiny_diffusion().eval()
    scores = [fid_eval(diffusion), fid_eval(diffusion)]
    assert reference.calls == 1
    assert all(np.isfinite(scores)) and all(s > 0 for s in scores)
    assert (tmp_path / "ref.npz").is_file()

    # A new evaluator (a resumed run) reads the cache instead of recomputing.
    again = evaluator(tmp_path, reference)
    mu, sigma = again.reference_statistics()
    assert reference.calls == 1
    np.testing.assert_array_equal(mu, fid_eval.reference_statistics()[0])
    np.testing.assert_array_equal(sigma, fid_eval.reference_statistics()[1])

    # A cache written for other reference images is not reused.
    evaluator(tmp_path, reference, key="digits-16").reference_statistics()
    assert reference.calls == 2


def test_training_with_fid_writes_the_fid_log_and_curve(tmp_path):
    torch.manual_seed(0)
    dataset, _ = load_dataset("digits", 8)
    reference = CountingReference(digits(64))
    trainer = Trainer(tiny_diffusion(), dataset, save_folder=tmp_path, batch_size=16,
                      train_steps=4, save_and_sample_every=2, num_samples=4,
                      fid_evaluator=evaluator(tmp_path, reference))
    trainer.train()
    with open(tmp_path / "fid.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert all(float(r["fid"]) > 0 for r in rows)
    assert (tmp_path / "fid.png").is_file()
    assert reference.calls == 1


@pytest.fixture
def offline_inception(monkeypatch):
    """Make clean-fid's Inception download fail the way it does without network."""
    if INCEPTION_FILE.exists():
        pytest.skip(f"{INCEPTION_FILE} is present, so clean-fid would not download")
    import cleanfid.downloads_helper

    # Port 9 (discard) on the loopback refuses connections: an immediate URLError.
    monkeypatch.setattr(cleanfid.downloads_helper, "inception_url",
                        "http://127.0.0.1:9/inception-2015-12-05.pt")


def test_missing_inception_weights_offline_give_a_clear_error(offline_inception):
    with pytest.raises(FIDUnavailableError, match="FID needs internet access once"):
        inception_feature_extractor("cpu")
    assert not INCEPTION_FILE.exists()  # no partial file left behind


def test_main_with_fid_offline_stops_before_training(tmp_path, capsys, offline_inception):
    with pytest.raises(SystemExit) as exit_info:
        main.main(["--fid", "--image_size", "8", "--unet_dim_mults", "1", "2",
                   "--save_folder", str(tmp_path), "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "FID needs internet access once" in err and "without --fid" in err
    assert not list(tmp_path.glob("model-*.pt"))
