"""A tiny logits model and control of the uniforms, for part 2's public tests and their generator.

Nothing here knows the binary diffusion formulas: expected values are read from
fixtures/public_binary.npz, which fixtures/generate_binary.py writes by running the staff reference.
"""

from pathlib import Path

import pytest
import torch
from torch import nn

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "public_binary.npz"


class TinyLogits(nn.Module):
    """A small, fixed model: logits(y, t) = conv3x3(y) + table[t], t in 1..T (table has T + 1 rows).

    The per-step table makes the output depend on t, so calling it with the wrong step changes
    the result. Weights come from the fixture file.
    """

    def __init__(self, conv_weight, conv_bias, table):
        super().__init__()
        channels = conv_weight.shape[0]
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.as_tensor(conv_weight))
            self.conv.bias.copy_(torch.as_tensor(conv_bias))
        self.register_buffer("table", torch.as_tensor(table, dtype=torch.float32))
        self.calls = []  # t of every call, in order

    def forward(self, y, t):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.shape != y.shape[:1]:
            raise TypeError(
                f"the model must be called as model(y_t, t) with t a (B,) int64 tensor; got "
                f"y_t {tuple(y.shape)} and t "
                f"{tuple(t.shape) + (t.dtype,) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if int(t.min()) < 1 or int(t.max()) >= self.table.shape[0]:
            raise IndexError(f"the model got steps {t.tolist()}; part 2's steps are 1..T "
                             f"(T = {self.table.shape[0] - 1})")
        self.calls.append(t.detach().clone())
        return self.conv(y.float()) + self.table[t][:, :, None, None]


def tiny_logits(data, name):
    return TinyLogits(data[f"{name}/conv_weight"], data[f"{name}/conv_bias"],
                      data[f"{name}/table"])


class FixedUniforms:
    """Answer every uniform draw from a queue of known tensors.

    Patches BinaryDiffusion.uniform_like, torch.rand, torch.rand_like and torch.bernoulli
    (bernoulli(p) is taken as u < p with the next u), so each of these ways of drawing gets the
    same numbers. Each draw must have the shape of the next queued tensor.
    """

    def __init__(self, monkeypatch, module, queue):
        self.queue = [torch.as_tensor(u, dtype=torch.float32) for u in queue]
        fixed = self

        def uniform_like(_self, shape, device):
            return fixed.next(shape, device, "uniform_like")

        def rand(*size, device=None, dtype=None, generator=None, **kwargs):
            if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
                size = size[0]
            u = fixed.next(size, device, "torch.rand")
            return u if dtype is None else u.to(dtype)

        def rand_like(input, *, dtype=None, device=None, **kwargs):
            u = fixed.next(input.shape, device if device is not None else input.device,
                           "torch.rand_like")
            return u.to(dtype if dtype is not None else input.dtype)

        def bernoulli(p, *args, **kwargs):
            p = torch.as_tensor(p)
            return (fixed.next(p.shape, p.device, "torch.bernoulli") < p).to(p.dtype)

        if module is not None:
            monkeypatch.setattr(module.BinaryDiffusion, "uniform_like", uniform_like)
        for target in (torch, module):
            for name, fake in (("rand", rand), ("rand_like", rand_like), ("bernoulli", bernoulli)):
                if target is torch or (target is not None and hasattr(target, name)):
                    monkeypatch.setattr(target, name, fake)

    def next(self, shape, device, how):
        shape = tuple(int(s) for s in shape)
        if not self.queue:
            pytest.fail(f"drew more uniforms ({how}{shape}) than this test expects", pytrace=False)
        u = self.queue.pop(0)
        if tuple(u.shape) != shape:
            pytest.fail(f"drew uniforms of shape {shape} with {how}; the reference draws a tensor "
                        f"of shape {tuple(u.shape)} (the images' shape) here", pytrace=False)
        return u.to(device if device is not None else "cpu")


