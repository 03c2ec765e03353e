"""FID of generated samples against the training images, with clean-fid (Parmar et al., 2022).

Images go through clean-fid's "clean" pipeline: quantized to uint8 as if saved to PNG, grey
images repeated to RGB, resized to 299x299 with PIL bicubic, then the Inception-v3 pool
features (2048-d). FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)).

The reference statistics (mu_r, S_r of the training images) are computed once, kept in memory,
and cached on disk in the save folder, so each evaluation only embeds the new samples.
"""

import urllib.error
import warnings
from pathlib import Path

import numpy as np
import torch

INCEPTION_HELP = (
    "FID needs internet access once, to download clean-fid's Inception-v3 weights "
    "(about 100 MB, saved as /tmp/inception-2015-12-05.pt) from nvlabs-fi-cdn.nvidia.com. "
    "Connect once, or copy that file there, or train without --fid.")


class FIDUnavailableError(RuntimeError):
    """The Inception weights cannot be loaded (usually: no network on first use)."""


def inception_feature_extractor(device):
    """clean-fid's Inception-v3: (B, 3, 299, 299) float in [0, 255] -> (B, 2048) features.

    Raises:
        FIDUnavailableError: the weights are not cached and cannot be downloaded.
    """
    from cleanfid.features import build_feature_extractor

    try:
        return build_feature_extractor("clean", torch.device(device), use_dataparallel=False)
    except (urllib.error.URLError, OSError) as e:
        raise FIDUnavailableError(f"{INCEPTION_HELP}\n(download failed: {e})") from e
    except RuntimeError as e:  # a truncated download fails in torch.jit.load
        raise FIDUnavailableError(
            f"{INCEPTION_HELP}\nThe cached weights could not be loaded ({e}); delete "
            "/tmp/inception-2015-12-05.pt and try again.") from e


def image_features(images, feat_model, device="cpu", batch_size=64):
    """Features of images, preprocessed as clean-fid preprocesses image files.

    Args:
        images: (N, C, H, W) float tensor in [0, 1], C = 1 or 3.
        feat_model: callable, (B, 3, 299, 299) float in [0, 255] on `device` -> (B, D).
    Returns:
        (N, D) float64 numpy array.
    """
    from cleanfid.resize import build_resizer

    resize = build_resizer("clean")
    # uint8 like torchvision.utils.save_image writes a PNG
    images = images.detach().mul(255).add(0.5).clamp(0, 255).to("cpu", torch.uint8)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    feats = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].permute(0, 2, 3, 1).numpy()  # (B, H, W, 3)
        resized = np.stack([resize(img) for img in batch]).transpose(0, 3, 1, 2)
        with torch.no_grad():
            out = feat_model(torch.from_numpy(np.ascontiguousarray(resized)).to(device))
        feats.append(out.reshape(len(batch), -1).double().cpu().numpy())
    return np.concatenate(feats)


def feature_statistics(feats):
    """Mean (D,) and covariance (D, D) of (N, D) features, as clean-fid computes them."""
    return np.mean(feats, axis=0), np.cov(feats, rowvar=False)


class FIDEvaluator:
    """FID of a diffusion model's samples against fixed reference images.

    Args:
        reference_images: callable returning (N, C, H, W) images in [0, 1]; called only when
            the statistics are neither in memory nor cached on disk.
        cache_path: .npz file for the reference statistics (reused when its key matches).
        cache_key: string naming the reference set (dataset, size, count, extractor); a cache
            written for another key is recomputed.
        num_samples: how many images to generate per evaluation.
        batch_size: sampling and feature batch size.
        device: where the feature extractor runs.
        feat_model: feature extractor, (B, 3, 299, 299) in [0, 255] -> (B, D); None loads
            clean-fid's Inception-v3 on first use (tests pass a small module).
    """

    def __init__(self, reference_images, cache_path, cache_key, num_samples=1000,
                 batch_size=64, device="cpu", feat_model=None):
        self.reference_images = reference_images
        self.cache_path = Path(cache_path)
        self.cache_key = str(cache_key)
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.device = device
        self._feat_model = feat_model
        self._reference = None

    @property
    def feat_model(self):
        if self._feat_model is None:
            self._feat_model = inception_feature_extractor(self.device)
        return self._feat_model

    def reference_statistics(self):
        """(mu, sigma) of the reference features: from memory, else the disk cache, else computed."""
        if self._reference is None:
            if self.cache_path.exists():
                with np.load(self.cache_path) as cached:
                    if str(cached["key"]) == self.cache_key:
                        self._reference = (cached["mu"], cached["sigma"])
        if self._reference is None:
            feats = image_features(self.reference_images(), self.feat_model, self.device,
                                   self.batch_size)
            mu, sigma = feature_statistics(feats)
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(self.cache_path, mu=mu, sigma=sigma, key=np.array(self.cache_key))
            self._reference = (mu, sigma)
        return self._reference

    def fid_of_images(self, images):
        """FID of (N, C, H, W) images in [0, 1] against the reference statistics."""
        from cleanfid.fid import frechet_distance

        mu_ref, sigma_ref = self.reference_statistics()
        mu, sigma = feature_statistics(
            image_features(images, self.feat_model, self.device, self.batch_size))
        with warnings.catch_warnings():  # clean-fid passes scipy's deprecated sqrtm(disp=...)
            warnings.simplefilter("ignore", DeprecationWarning)
            return float(frechet_distance(mu, sigma, mu_ref, sigma_ref))

    @torch.no_grad()
    def __call__(self, diffusion, sampler=None):
        """Generate self.num_samples images and return their FID.

        Args:
            diffusion: the model; its `sample(n)` generates unless `sampler` is given.
            sampler: optional callable n -> n images in [0, 1] (the trainer's fast path).
        """
        self.reference_statistics()  # fail early (e.g. offline) before spending time sampling
        sample = diffusion.sample if sampler is None else sampler
        # Batches of (nearly) equal size: a CUDA-graph sampler captures once per size.
        batches = -(-self.num_samples // self.batch_size)
        sizes = [self.num_samples // batches + (i < self.num_samples % batches)
                 for i in range(batches)]
        samples = [sample(n).float().cpu() for n in sizes]
        return self.fid_of_images(torch.cat(samples))
