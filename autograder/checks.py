"""Verdicts: compare what a probe returned with the reference, within derived float32 bounds.

Runs in the grader process only. Expected tensors never leave it; a failure message names the
input, the largest difference, where it is, and the expected/got values at that one element.

Error model (first order, u = 2**-24 the float32 unit roundoff): every float32 operation
(+, -, *, /, sqrt, exp) returns the exact result times (1 + d), |d| <= u. A student's expression
that is mathematically equal to the reference may order and group operations differently, or
recompute a coefficient from another buffer (e.g. sqrt(alphas_cumprod) instead of
sqrt_alphas_cumprod): at most ~8 rounded operations per output element in any sensible form. Each
rounding of an intermediate of size m perturbs the result by at most u * m * (its amplification).
So a bound of K * u * sum(|each term|), with K = 16 (8 operations, times 2 for safety), covers any
ordering in float32, and float64 computation is more accurate still. Bugs change results by far
more (a wrong coefficient, a missing term, a shifted index: relative 1e-3 .. 1).
"""

from dataclasses import dataclass

import torch

U32 = 2.0 ** -24
K = 16.0


@dataclass
class Verdict:
    passed: bool
    message: str = ""

    @classmethod
    def ok(cls, message=""):
        return cls(True, message)

    @classmethod
    def fail(cls, message):
        return cls(False, message)


def fmt_index(idx):
    return "[" + ", ".join(str(int(i)) for i in idx) + "]"


def fmt(x):
    return f"{x:.6g}"


def as_float64(array):
    """A probe output (numpy) as a float64 tensor; raises ValueError if it is not numeric."""
    t = torch.from_numpy(array) if not isinstance(array, torch.Tensor) else array
    if t.dtype == torch.bool:
        t = t.to(torch.int64)
    return t.to(torch.float64)


def compare(got, expected, tol, *, what):
    """Element-wise |got - expected| <= tol. Returns (ok, message lines).

    got: numpy/tensor from the probe; expected: float64 tensor; tol: float64 tensor broadcastable
    to expected (or a float). Shape, non-finite values and dtype problems are reported in words.
    """
    if got is None:
        return False, [f"{what}: nothing was returned"]
    got = as_float64(got)
    expected = expected.to(torch.float64)
    if tuple(got.shape) != tuple(expected.shape):
        if got.numel() == expected.numel():
            return False, [f"{what}: shape {tuple(got.shape)}, expected {tuple(expected.shape)} "
                           "(same number of elements: a reshape or a missing/extra dimension?)"]
        return False, [f"{what}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}"]
    if not torch.isfinite(got).all():
        bad = (~torch.isfinite(got)).nonzero()[0].tolist()
        return False, [f"{what}: non-finite value {fmt(float(got[tuple(bad)]))} at {fmt_index(bad)}"]
    tol = torch.as_tensor(tol, dtype=torch.float64).expand_as(expected)
    diff = (got - expected).abs()
    excess = diff - tol
    if expected.numel() == 0 or bool((excess <= 0).all()):
        return True, []
    flat = int(torch.argmax(excess.reshape(-1)))
    idx = torch.unravel_index(torch.tensor(flat), expected.shape)
    idx = tuple(int(i) for i in idx)
    n_bad = int((excess > 0).sum())
    return False, [
        f"{what}: {n_bad} of {expected.numel()} values differ from the reference.",
        f"  largest difference {fmt(float(diff[idx]))} at {fmt_index(idx)}; expected "
        f"{fmt(float(expected[idx]))}, got {fmt(float(got[idx]))} "
        f"(allowed {fmt(float(tol[idx]))}, from float32 rounding)",
    ]


def bound(*terms):
    """K u sum(|terms|): the float32 error bound of a short expression (see module docstring)."""
    total = 0
    for term in terms:
        total = total + torch.as_tensor(term, dtype=torch.float64).abs()
    return K * U32 * total + 1e-30


def buffer_tolerance(ref, abar, abar_prev):
    """Tolerance for the schedule buffers, element i (time index i).

    A float32 cumprod of i + 1 factors has relative error <= (i + 2) u (each product rounds once,
    plus the rounding of the inputs). Forming 1 - abar then loses relative accuracy by a factor
    1 / (1 - abar) (cancellation when abar is close to 1, the first steps), and 1 - abar_prev the
    same (abar_prev = 1 exactly at i = 0, where the term is exactly 0 in any form). Each buffer is
    a product/quotient of at most these, plus <= 4 roundings: relative error <= 4 u (i + 3) (1 +
    1/(1 - abar_i) + 1/(1 - abar_prev_i)), the 4 covering those roundings. An absolute floor of
    4 u max|buffer| covers entries that are exactly 0.
    """
    i = torch.arange(ref.shape[0], dtype=torch.float64)
    one_minus_prev = (1 - abar_prev).clamp_min(1e-300)
    amp = 1 + 1 / (1 - abar).clamp_min(1e-12) + torch.where(abar_prev < 1, 1 / one_minus_prev, 0.0)
    return 4 * U32 * (i + 3) * amp * ref.abs() + 4 * U32 * ref.abs().max()
