"""Helpers any graded part's probes may use inside the sandbox (copied there beside worker.py).

Standalone (stdlib and torch); the grader imports it too, as autograder.runtime.probekit, to
recompute what a probe was answered.
"""


def probe_noise(seed, k, shape, _randn=None):
    """The k-th standard normal draw a probe hands out: float32 on the CPU, from (seed, k) only.

    Both sides call this: the worker to answer the student's noise calls, the grader to know what
    was answered, so no noise ever travels back from the untrusted process.
    """
    import torch

    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(k))
    return (_randn or torch.randn)(tuple(int(s) for s in shape), generator=g, dtype=torch.float32)


class NoisePatch:
    """Answer every standard-normal draw (torch.randn, randn_like, normal, Tensor.normal_) with
    probe_noise(seed, k, shape), k = 0, 1, ... in call order, in the requested dtype and device."""

    def __init__(self, seed):
        import torch

        self.torch, self.seed, self.count = torch, seed, 0
        self.saved = {}

    def _draw(self, shape, dtype=None, device=None):
        torch = self.torch
        z = probe_noise(self.seed, self.count, shape, _randn=self.saved["randn"])
        self.count += 1
        z = z.to(dtype or torch.get_default_dtype())
        return z.to(device) if device is not None else z

    def __enter__(self):
        torch, patch = self.torch, self

        def shape_of(args, kwargs):
            if "size" in kwargs:
                args = (kwargs["size"],)
            if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)):
                return tuple(args[0])
            return tuple(int(a) for a in args)

        def randn(*args, dtype=None, device=None, **kwargs):
            out = patch._draw(shape_of(args, kwargs), dtype, device)
            return out.requires_grad_(True) if kwargs.get("requires_grad") else out

        def randn_like(x, *, dtype=None, device=None, **kwargs):
            return patch._draw(x.shape, dtype or x.dtype, device or x.device)

        def normal(mean=0.0, std=1.0, size=None, *, generator=None, dtype=None, device=None,
                   **kwargs):
            if isinstance(mean, torch.Tensor) or isinstance(std, torch.Tensor):
                ref = mean if isinstance(mean, torch.Tensor) else std
                shape = torch.broadcast_shapes(getattr(mean, "shape", ()), getattr(std, "shape", ()))
                return patch._draw(shape, ref.dtype, ref.device) * std + mean
            return patch._draw(tuple(size), dtype, device) * std + mean

        def normal_(self_tensor, mean=0.0, std=1.0, *, generator=None):
            with torch.no_grad():
                self_tensor.copy_(patch._draw(self_tensor.shape, self_tensor.dtype,
                                              self_tensor.device) * std + mean)
            return self_tensor

        self.saved = {"randn": torch.randn, "randn_like": torch.randn_like,
                      "normal": torch.normal, "normal_": torch.Tensor.normal_}
        torch.randn, torch.randn_like, torch.normal = randn, randn_like, normal
        torch.Tensor.normal_ = normal_
        return self

    def __exit__(self, *exc):
        torch = self.torch
        torch.randn, torch.randn_like = self.saved["randn"], self.saved["randn_like"]
        torch.normal, torch.Tensor.normal_ = self.saved["normal"], self.saved["normal_"]
        return False
