"""The grader's float32 error model (autograder/checks.py): its batched JVPs are autograd's, and its
allowances cover real float32 evaluations of the forms students write."""

import sys
from pathlib import Path

import torch
import torch.autograd.forward_ad as fwAD

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from autograder.checks import U32, Form  # noqa: E402
from autograder.config import GRADED_MODULES  # noqa: E402
from autograder.grade import load_reference  # noqa: E402
from tests_hidden.diffusion import tests as hidden  # noqa: E402
from tests_hidden.diffusion.probes import CONTRACT_BUFFERS  # noqa: E402


def _posterior(site, abar, alpha, x0, x):
    om = site("1-abar", 1 - abar)
    prev = site("abar_prev", abar / alpha)
    c1 = torch.sqrt(prev) * site("1-alpha", 1 - alpha) / om
    c2 = torch.sqrt(alpha) * site("1-prev", 1 - prev) / om
    return site("mean", c1 * site("x0", x0) + c2 * site("x", x))


def test_batched_jvps_are_forward_mode_autograd():
    g = torch.Generator().manual_seed(0)
    inputs = dict(abar=torch.rand(5, 1, dtype=torch.float64, generator=g) * 0.9 + 0.05,
                  alpha=torch.rand(5, 1, dtype=torch.float64, generator=g) * 0.5 + 0.5,
                  x0=torch.randn(5, 3, dtype=torch.float64, generator=g),
                  x=torch.randn(5, 3, dtype=torch.float64, generator=g))
    value, err = Form(_posterior).evaluate(**inputs)
    names = ["1-abar", "abar_prev", "1-alpha", "1-prev", "x0", "x", "mean"]
    total = torch.zeros_like(value)
    for active in names:  # one forward-mode JVP per site, tangent u |site|
        def site(name, v, active=active):
            if name != active:
                return v
            return fwAD.make_dual(fwAD.unpack_dual(v).primal, U32 * fwAD.unpack_dual(v).primal.abs())
        with fwAD.dual_level():
            total += fwAD.unpack_dual(_posterior(site, **inputs)).tangent.abs()
    assert torch.allclose(err, total, rtol=1e-6, atol=0), (err, total)


class _Ctx:
    cache = {}
    reference = load_reference(next(m for m in GRADED_MODULES if m.name == "diffusion"))


def test_exact_schedule_rounds_to_the_reference_buffers():
    ctx = _Ctx()
    for schedule in ("cosine", "linear"):
        for T in (1, 2, 50, 1000):
            exact, tol = hidden.exact(ctx, T, schedule)
            ref = hidden.reference_of(ctx, T, schedule)
            for name in CONTRACT_BUFFERS:
                stored = getattr(ref, name).double()
                # the reference computes in float64 and stores float32: one rounding
                assert ((stored - exact[name]).abs() <= U32 * exact[name].abs() * 1.0001).all(), name
                assert ((stored - exact[name]).abs() <= tol[name]).all(), name


def test_float32_forms_of_p_sample_stay_inside_the_allowance():
    """Evaluate the four p_sample forms in float32 from float32 buffers (what a student's code
    does) at many inputs: each stays inside the allowance, with room."""
    ctx = _Ctx()
    T, schedule = 1000, "cosine"
    b, _ = hidden.exact(ctx, T, schedule)
    b32 = {k: v.float() for k, v in b.items()}
    g = torch.Generator().manual_seed(1)
    worst = 0.0
    for t_index in (0, 1, 2, 10, 500, 990, 999):
        x = torch.randn(4, 3, 4, 4, generator=g)
        z = torch.randn(4, 3, 4, 4, generator=g)
        expected, tol = hidden.p_sample_expected(ctx, T, schedule, x, t_index, z)
        t = torch.full((4,), t_index, dtype=torch.long)
        for form in hidden._P_FORMS:
            def site32(name, v, err=None, colors=1):
                return v
            site32.clamp = lambda v, ndim, **kw: v.clamp(-1, 1)
            got = form.fn(site32, b32, t, t_index, x, z, T)  # the formula in float32
            worst = max(worst, float(((got.double() - expected).abs() / tol).max()))
    assert worst < 0.5, worst  # measured: 0.07
