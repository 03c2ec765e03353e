"""Tiny models, noise control and comparisons shared by the public tests and their fixture generator.

Nothing here knows the diffusion formulas: expected values are read from fixtures/public.npz, which
fixtures/generate.py writes by running the staff reference under fixed seeds.
"""

import contextlib
import os
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "public.npz"


class TinyEps(nn.Module):
    """A small, fixed noise predictor: eps(x, t) = tanh(conv3x3(x)) + table[t].

    The per-step table makes the output depend on the time index, so calling the model with the
    wrong t changes the result. Weights come from the fixture file, not from the RNG.
    """

    def __init__(self, conv_weight, conv_bias, table):
        super().__init__()
        channels = conv_weight.shape[0]
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.as_tensor(conv_weight))
            self.conv.bias.copy_(torch.as_tensor(conv_bias))
        self.register_buffer("table", torch.as_tensor(table, dtype=torch.float32))
        self.calls = []  # (t, x shape) of every call, in order

    def forward(self, x, t):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or t.shape != x.shape[:1]:
            raise TypeError(
                f"the model must be called as model(x, t) with t a (B,) int64 tensor; got "
                f"x {tuple(x.shape)} and t "
                f"{tuple(t.shape) + (t.dtype,) if isinstance(t, torch.Tensor) else type(t).__name__}")
        self.calls.append((t.detach().clone(), tuple(x.shape)))
        return torch.tanh(self.conv(x)) + self.table[t][:, :, None, None]


def tiny_model(data, name):
    """The TinyEps stored in the fixtures under `name`."""
    return TinyEps(data[f"{name}/conv_weight"], data[f"{name}/conv_bias"], data[f"{name}/table"])


def t_tensor(values):
    return torch.as_tensor(np.asarray(values), dtype=torch.int64)


SUBMISSION = None  # the submission's diffusion.py (a Path), set by conftest.py
_shown = {}  # an error already shown in full -> the test that showed it


def current_test():
    """The running test's name, e.g. test_q_sample_matches_reference."""
    return os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0].split("::")[-1]


def shown_once(key, full, short):
    """`full` in the first test that meets `key`; in later tests, the one-line `short` naming it."""
    first = _shown.setdefault(key, current_test())
    return full if first == current_test() else f"{short} (shown in full in {first})"


def submission_frames(err, limit=2):
    """'diffusion.py:120, in __init__: <code>' for the innermost frames in the submission's file."""
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if SUBMISSION is not None and Path(f.filename).resolve() == SUBMISSION]
    return [f"{Path(f.filename).name}:{f.lineno}, in {f.name}: {(f.line or '').strip()}"
            for f in frames[-limit:]]


def check(condition, message):
    """Fail with just `message` (no traceback) unless `condition` holds."""
    if not condition:
        pytest.fail(message, pytrace=False)


def _error_message(what, err):
    if isinstance(err, NotImplementedError):
        called = str(err).split(":")[0]
        return f"not implemented: {err}" + ("" if called == what else f" (needed by {what})")
    text = str(err).strip() or "(no message)"
    if len(text) > 400:
        text = text[:400] + " ..."
    where = submission_frames(err)
    full = [f"{what} raised {type(err).__name__}: {text}"]
    full += [f"  at {w}" for w in where]  # outermost first; the last line raised it
    if what == "Diffusion.__init__" and "must match the size" in text:
        full.append("  every buffer has shape (T,): check the lengths of the tensors combined "
                    "on that line")
    spot = where[-1].split(": ")[0] if where else "outside your file"
    # The same error type from the same line is the same bug, whatever the sizes in its message.
    return shown_once((what, type(err).__name__, tuple(where) or text), "\n".join(full),
                      f"{what} raised {type(err).__name__} at {spot}")


@contextlib.contextmanager
def student_code(what):
    """Turn an exception raised by the submission into one short failure: `what` (the function
    under test), the error, and the line of the submission that raised it. An error already shown
    in full by an earlier test (e.g. a broken __init__, which every test needs) takes one line."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - whatever the student's code raises
        message = _error_message(what, err)
    else:
        return
    raise pytest.fail.Exception(message, pytrace=False) from None


class FixedNoise:
    """Replace every way of drawing standard normal noise by a queue of known tensors.

    Patches Diffusion.noise_like, torch.randn, torch.randn_like, torch.normal (in torch and in the
    submission's module, for `from torch import randn`) and Tensor.normal_, so any of these ways
    of drawing z gets the same z, as in the grader. Each draw must have the shape of the next
    queued tensor.
    """

    def __init__(self, monkeypatch, module, queue):
        self.queue = [torch.as_tensor(z, dtype=torch.float32) for z in queue]
        self.draws = []  # (shape, requested device) of every draw
        fake_randn = self._randn
        fake_randn_like = self._randn_like

        def noise_like(_self, shape, device):
            return self._next(shape, device, "noise_like")

        monkeypatch.setattr(module.Diffusion, "noise_like", noise_like)
        for target in (torch, module):
            for name, fake in (("randn", fake_randn), ("randn_like", fake_randn_like),
                               ("normal", self._normal)):
                if target is torch or hasattr(target, name):
                    monkeypatch.setattr(target, name, fake)
        fixed = self

        def normal_(tensor, mean=0.0, std=1.0, *, generator=None):  # a method: gets the tensor
            return fixed._normal_(tensor, mean, std)

        monkeypatch.setattr(torch.Tensor, "normal_", normal_)

    def _next(self, shape, device, how):
        shape = tuple(int(s) for s in shape)
        if not self.queue:
            pytest.fail(f"drew more noise ({how}{shape}) than this test expects", pytrace=False)
        z = self.queue.pop(0)
        if tuple(z.shape) != shape:
            pytest.fail(f"drew noise of shape {shape} with {how}; the reference draws one standard "
                        f"normal tensor of shape {tuple(z.shape)} (the shape of x) here",
                        pytrace=False)
        self.draws.append((shape, device))
        return z.to(device if device is not None else "cpu")

    def _randn(self, *size, device=None, dtype=None, generator=None, **kwargs):
        if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
            size = size[0]
        z = self._next(size, device, "torch.randn")
        return z if dtype is None else z.to(dtype)

    def _normal(self, mean=0.0, std=1.0, size=None, *, generator=None, dtype=None, device=None,
                **kwargs):
        if isinstance(mean, torch.Tensor) or isinstance(std, torch.Tensor):
            like = mean if isinstance(mean, torch.Tensor) else std
            shape = torch.broadcast_shapes(getattr(mean, "shape", ()), getattr(std, "shape", ()))
            z = self._next(shape, like.device, "torch.normal").to(like.dtype)
        else:
            z = self._next(size, device, "torch.normal")
            z = z if dtype is None else z.to(dtype)
        return z * std + mean

    def _normal_(self, tensor, mean=0.0, std=1.0):
        z = self._next(tensor.shape, tensor.device, "Tensor.normal_")
        with torch.no_grad():
            tensor.copy_(z * std + mean)
        return tensor

    def _randn_like(self, input, *, dtype=None, device=None, **kwargs):
        z = self._next(input.shape, device if device is not None else input.device,
                       "torch.randn_like")
        return z.to(dtype if dtype is not None else input.dtype)


def _fmt_index(idx):
    return "[" + ", ".join(str(int(i)) for i in idx) + "]"


def assert_matches(name, got, expected, rtol, atol, hint=""):
    """Fail with an actionable message unless |got - expected| <= atol + rtol * |expected| everywhere.

    Args:
        name: the function and its input, e.g. "q_sample (T=50, cosine, t=[0, 7, 49])".
        got: what the submission returned (a tensor or a Python number).
        expected: the stored reference value (numpy array or number).
        rtol, atol: the tolerance, derived where the test calls this.
        hint: one line on what usually causes a mismatch here.
    """
    expected = np.asarray(expected, dtype=np.float64)
    if isinstance(got, (int, float)) and expected.ndim == 0:
        got = torch.tensor(float(got))
    if not isinstance(got, torch.Tensor):
        pytest.fail(f"{name}: expected a torch.Tensor, got {type(got).__name__}", pytrace=False)
    if got.is_complex() or not got.is_floating_point():
        pytest.fail(f"{name}: expected a floating point tensor, got dtype {got.dtype}", pytrace=False)
    if tuple(got.shape) != expected.shape:
        pytest.fail(f"{name}: expected shape {expected.shape}, got {tuple(got.shape)}"
                    + (f"\n  {hint}" if hint else ""), pytrace=False)
    got_np = torch.Tensor.detach(got).to("cpu", torch.float64).numpy().copy()
    if not np.all(np.isfinite(got_np)):
        bad = np.argwhere(~np.isfinite(got_np))[0]
        pytest.fail(f"{name}: output has nan or inf, first at {_fmt_index(bad)}"
                    + (f"\n  {hint}" if hint else ""), pytrace=False)
    diff = np.abs(got_np - expected)
    allowed = atol + rtol * np.abs(expected)
    bad = diff > allowed
    if not bad.any():
        return
    where = np.unravel_index(np.argmax(diff - allowed), diff.shape) if diff.ndim else ()
    lines = [f"{name}: output differs from the reference.",
             f"  {int(bad.sum())} of {bad.size} values outside the tolerance "
             f"(|got - expected| <= {atol:g} + {rtol:g} * |expected|)",
             f"  largest difference {diff[where]:.4g}"
             + (f" at {_fmt_index(where)}" if diff.ndim else "")
             + f"; expected {expected[where]:.6g}, got {got_np[where]:.6g}"]
    if hint:
        lines.append(f"  {hint}")
    pytest.fail("\n".join(lines), pytrace=False)


# Tolerance for outputs (q_sample, p_loss, p_sample, p_sample_loop, sample) at T <= 50. A correct
# solution may compute its coefficients in float32 (relative error up to eps32 / (1 - abar_1), about
# 6e-8 / 4e-3 = 1.5e-5 at T = 50) or do all arithmetic in float64; outputs are O(1) with inputs up
# to about 5, so the two differ by at most ~1e-4 after the few multiply-adds of one step, and
# 20-step sampling loops contract (x0_hat is clamped). Measured on four correct solutions written
# differently (float32 and float64 arithmetic): worst difference 8.3e-6, in p_sample.
OUT_RTOL, OUT_ATOL = 1e-4, 1e-4
