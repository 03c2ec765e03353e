"""Verdicts: compare what a probe returned with the reference, within derived float32 allowances.

Runs in the grader process only. Expected tensors never leave it; a failure message names the
input, the largest difference (absolute and relative), where it is, and the expected/got values at
that element with enough digits to show the difference.

Error model (first order; u = 2**-24, the float32 unit roundoff)
-----------------------------------------------------------------
A correct student starts from float32 quantities: the eight schedule buffers, `alphas`, the
model's float32 output and the inputs, each the exact value times (1 + d), |d| <= u. They may
combine them in any algebraically equivalent way, in float32 or float64. The expected value is the
exact one: the reference formula evaluated in float64 on exact (float64) quantities. The allowance
for one output element is

    allowance = (1 + OPS) * sum over sites k of |d out / d site_k| * err_k

where a *site* is one float32 quantity some correct form of the computation holds: every input
(err = u |value|), and every sum or difference a form forms (1 - abar, x - s1 eps, the mean, ...),
whose own rounding is relative to the sum and not to its terms (this is where cancellation lives:
1 - abar near t = 0). The derivatives are directional derivatives (JVPs) of the float64 formula,
all sites in one batched pass by central differences (see _Sites: forward-mode autograd gives the
same numbers but costs seconds per grading on tensors this small). A site used twice, e.g. one
buffer read in two places, is one quantity and is perturbed coherently; a vector whose elements
are rounded separately (the schedule's angles) is perturbed per colour class. The factor 1 + OPS
bounds the remaining roundings: a product, quotient or square root of site values rounds to
(1 + d) times its exact value, which moves the output by at most the contribution of one of its
operands (twice that for a square root); at most OPS = 8 such operations lie between any site and
the output in the forms we accept, so their total is at most OPS times the sites' sum. Computing in
float64 only removes roundings, so the same bound holds.

Several forms of one computation (e.g. p_sample through q_posterior's buffers, eq. (3) inline from
`alphas`/`alphas_cumprod`/`alphas_cumprod_prev`, or the eps-form of the mean) are each written out as
a float64 function whose sites are marked (`Form`); the allowance is the largest over the forms.
Bugs move results by a relative 1e-3 .. 1 where the allowance is ~1e-6; `margins` (tests/margins.py)
measures, for every graded test, the smallest deviation a catalogued bug produces over the
allowance, and the repository's tests require it to be at least 10.
"""

import contextlib
import math
from dataclasses import dataclass

import torch

U32 = 2.0 ** -24
OPS = 8
K = 1 + OPS  # the allowance is K times the sites' first-order sum (see the module docstring)


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


# ----------------------------------------------------------------------------- margins record

class _Record:
    """Which graded test is running, and for each, the largest |got - expected| / allowance of
    its comparisons (inf for a structural failure). tests/margins.py reads it."""

    def __init__(self):
        self.stack, self.ratios = [], {}

    @contextlib.contextmanager
    def test(self, test_id):
        self.stack.append(test_id)
        try:
            yield
        finally:
            self.stack.pop()

    def note(self, ratio):
        if self.stack:
            key = self.stack[-1]
            self.ratios[key] = max(self.ratios.get(key, 0.0), float(ratio))


RECORD = _Record()


# ----------------------------------------------------------------------------- the error model

class _Sites:
    """The `site` a form's function receives. Recording pass: numbers the sites and notes their
    dimensions. Perturbed pass: site values gain a leading axis of 2S + 1 copies; copy 0 is exact,
    copies 2k + 1 and 2k + 2 move site k by +/- STEP times its error. Central differences give each
    directional derivative (the JVP "site k moves by its error") to ~1e-10 relative, all S of them
    in one batched float64 evaluation: a forward-mode JVP without autograd's per-op overhead,
    which on tensors this small would cost seconds per grading."""

    STEP = 1e-6 / U32  # a relative move of ~1e-6: far above float64 noise, well inside linearity

    def __init__(self, names=None):
        self.recording = names is None
        self.names = {} if names is None else names  # name: (first index, ndim, colors)
        self.count = sum(c for _, _, c in self.names.values())
        self.n = 2 * self.count + 1

    def __call__(self, name, value, err=None, colors=1):
        """`value` as a float32 quantity. By default its elements move together: exact wherever
        each output element depends on one of them (element-wise, or gathered at t), and right
        for one stored quantity read twice. colors=c: element j moves with the elements j' = j
        (mod c) only; for a vector whose element j is rounded on its own and an output element
        that depends on elements at most c - 1 apart (plus cancelling ones), this separates their
        roundings as if each were perturbed alone (Curtis-Powell-Reid compression)."""
        if self.recording:
            if name not in self.names:
                self.names[name] = (self.count, value.dim(), colors)
                self.count += colors
            return value
        k, ndim, colors = self.names[name]
        e = U32 * value.abs() if err is None else torch.as_tensor(err, dtype=torch.float64)
        shape = tuple(value.shape[value.dim() - ndim:])
        numel = math.prod(shape)
        color = torch.arange(numel) % colors
        step = torch.zeros(self.n, numel, dtype=torch.float64)
        j = torch.arange(numel)
        step[2 * (k + color) + 1, j], step[2 * (k + color) + 2, j] = self.STEP, -self.STEP
        return value + step.reshape(self.n, *shape) * e

    def clamp(self, x, ndim, lo=-1.0, hi=1.0, guard=1e-3):
        """clamp(x) (x has `ndim` dimensions unperturbed) that passes perturbations where the
        exact x is within `guard` of [lo, hi]: clamping is 1-Lipschitz, so near a bound an error
        in x can move the result as much as it moves x."""
        if self.recording or x.dim() == ndim:
            return x.clamp(lo, hi)
        exact = x[:1]
        inside = (exact >= lo - guard) & (exact <= hi + guard)
        return torch.where(inside, x + (exact.clamp(lo, hi) - exact), exact.clamp(lo, hi))


class Form:
    """One way to compute a quantity, in float64, with its float32 sites marked.

    Write the formula as fn(site, **inputs) and wrap each float32 quantity in site(name, value)
    (optionally err=its absolute error; default u |value|); use site.clamp for clamps. The
    formula must broadcast over one extra leading axis (index from the end: dim=-1, [..., 0]).
    `Form(fn).evaluate(**inputs)` returns (exact value, first-order error sum over the sites)."""

    def __init__(self, fn):
        self.fn = fn

    def evaluate(self, **inputs):
        record = _Sites()
        value = self.fn(record, **inputs)
        if not record.names:
            return value, torch.zeros_like(value)
        out = self.fn(_Sites(dict(record.names)), **inputs)
        if out.dim() == value.dim():  # no site reached the output
            return value, torch.zeros_like(value)
        jvps = (out[1::2] - out[2::2]) / (2 * _Sites.STEP)
        return value, jvps.abs().sum(0)


def allowance(forms, **inputs):
    """(expected, allowance): the first form's exact value and K times the largest site sum."""
    expected, worst = None, None
    for form in forms:
        value, err = form.evaluate(**inputs)
        expected = value if expected is None else expected
        worst = err if worst is None else torch.maximum(worst, err)
    return expected, K * worst + 1e-300


def summation(terms):
    """Allowance for a float32 sum/mean of `terms` beyond the terms' own errors: pairwise
    (cascade) summation of N terms rounds each term at most ceil(log2 N) + 1 times."""
    n = max(terms.numel(), 1)
    return (math.ceil(math.log2(n)) + 1) * U32 * terms.abs().sum()


# ----------------------------------------------------------------------------- comparing

def fmt_index(idx):
    return "[" + ", ".join(str(int(i)) for i in idx) + "]"


def fmt(x):
    """Enough digits to tell two nearby float32 values apart (9 significant digits)."""
    return f"{x:.9g}"


def describe(value):
    """What a function returned, in words, when it is not a tensor."""
    if value is None:
        return "None (a missing `return`?)"
    if value is Ellipsis:
        return "Ellipsis (the `...` placeholder)"
    if isinstance(value, tuple):
        return f"a tuple of {len(value)}"
    return f"a {type(value).__name__}"


def as_float64(array):
    """A probe output (numpy) as a float64 tensor; raises ValueError if it is not numeric."""
    t = torch.from_numpy(array) if not isinstance(array, torch.Tensor) else array
    if t.dtype == torch.bool:
        t = t.to(torch.int64)
    if t.is_complex():
        raise ValueError(f"a complex tensor ({t.dtype})")
    return t.to(torch.float64)


def compare(got, expected, tol, *, what, returned=None, source="float32 rounding"):
    """Element-wise |got - expected| <= tol. Returns (ok, message lines).

    got: numpy/tensor from the probe (None if the probe returned no tensor; `returned` then says
    what it returned, in words); expected: float64 tensor; tol: tensor broadcastable to expected
    (or a float). Shape, non-finite values and dtype problems are reported in words.
    """
    if got is None:
        RECORD.note(math.inf)
        return False, [f"{what}: returned {returned or 'no tensor'}; expected a tensor of shape "
                       f"{tuple(expected.shape)}"]
    try:
        got = as_float64(got)
    except (TypeError, ValueError) as exc:
        RECORD.note(math.inf)
        return False, [f"{what}: returned values that are not numbers ({exc})"]
    expected = expected.to(torch.float64)
    if tuple(got.shape) != tuple(expected.shape):
        RECORD.note(math.inf)
        if got.numel() == expected.numel():
            return False, [f"{what}: shape {tuple(got.shape)}, expected {tuple(expected.shape)} "
                           "(same number of elements: a reshape or a missing/extra dimension?)"]
        return False, [f"{what}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}"]
    if not torch.isfinite(got).all():
        RECORD.note(math.inf)
        bad = (~torch.isfinite(got)).nonzero()[0].tolist()
        return False, [f"{what}: non-finite value {fmt(float(got[tuple(bad)]))} at {fmt_index(bad)}"]
    tol = torch.as_tensor(tol, dtype=torch.float64).expand_as(expected)
    diff = (got - expected).abs()
    if expected.numel() == 0:
        return True, []
    ratio = diff / tol.clamp_min(1e-300)
    RECORD.note(float(ratio.max()))
    excess = diff - tol
    if bool((excess <= 0).all()):
        return True, []
    flat = int(torch.argmax(ratio.reshape(-1)))
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), expected.shape))
    n_bad = int((excess > 0).sum())
    e, g, d = float(expected[idx]), float(got[idx]), float(diff[idx])
    rel = f", relative {d / abs(e):.3g}" if e != 0 else ""
    where = f" at {fmt_index(idx)}" if idx else ""
    return False, [
        f"{what}: {n_bad} of {expected.numel()} values differ from the reference.",
        f"  worst{where}: expected {fmt(e)}, got {fmt(g)}; difference {d:.3g}{rel} "
        f"(allowed {float(tol[idx]):.3g}, from {source})",
    ]


# ----------------------------------------------------------------------------- older helpers

def bound(*terms):
    """K u sum(|terms|): a short float32 expression's error when no term cancels (other parts)."""
    total = 0
    for term in terms:
        total = total + torch.as_tensor(term, dtype=torch.float64).abs()
    return 2 * K * U32 * total + 1e-30
