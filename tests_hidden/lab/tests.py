"""Part 3 (the notebook lab): hidden tests. Runs in the GRADER; computes every verdict.

Each test calls one graded function of the submitted notebook in the sandbox (probes.py), computes
the expected value with the staff notebook's function (ctx.reference: solutions/lab.ipynb reduced
to its definitions) in float64, and compares within a derived allowance:

- deterministic functions: `allowance` below, the style guide's conditioning bound. Each float
  input is perturbed relatively (a float32 student rounds it by u = 2^-24), the change of the
  exact result is measured by a float64 finite difference, and the evaluation's own roundings add
  OPS units of u on the same scale (+ one u per summed element for reductions). A student may
  compute in float32 or float64, in any equivalent order.
- functions that draw their own noise (noise_sequentially, white_gap, sample): the answer is a
  random variable whatever the draw order, so the test checks its distribution: sample means and
  variances within 5 standard errors of the exact value (false alarm < 1e-6 per check; the
  draws are deterministic under the sandbox's noise patch, so a verdict never flips on re-grade).

Test ids are "<question>_<function>"; rubric.toml names them "<question>.<function>: ...".
"""

import math
from contextlib import contextmanager

import torch

from autograder.checks import Verdict, compare

from . import probes

U = 2.0 ** -24
OPS = 16          # roundings per output element in any sensible form, x2 for safety
SIGMAS = 5.0      # statistical checks: 5 standard errors
TIMEOUT_S = 10.0  # per probe: every graded call here takes milliseconds


# ----------------------------------------------------------------------------- helpers

def _gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(seed, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=_gen(seed), dtype=torch.float64).to(dtype)


def allowance(f, inputs, ops=OPS, schedules=()):
    """Per-element bound on |f in float32 - f exact| (see module docstring); f returns a tensor
    or a number, inputs are float64 tensors, floats or anything else (not perturbed).

    For a schedule (the positions in `schedules`: betas or alphas in [0, 1]) a student may work
    with the complement (alpha = 1 - beta, rounded on the scale of 1, not of beta), so its
    complement is perturbed too."""
    base = torch.as_tensor(f(*inputs), dtype=torch.float64)
    cond = torch.zeros_like(base)
    for i, x in enumerate(inputs):
        if not (isinstance(x, float) or (isinstance(x, torch.Tensor) and x.is_floating_point())):
            continue
        bumps = [x * (1 + 1e-6)]
        if i in schedules:
            bumps.append(1 - (1 - x) * (1 + 1e-6))
        for bumped in bumps:
            moved = torch.as_tensor(f(*inputs[:i], bumped, *inputs[i + 1:]), dtype=torch.float64)
            cond = cond + ((moved - base) / 1e-6).abs()
    return U * ops * (cond + base.abs()) + 1e-300


@contextmanager
def standins(module, names):
    """Install probes.STANDINS[name] for each name in module (the reference), then restore."""
    saved = {n: getattr(module, n) for n in names}
    try:
        for n in names:
            setattr(module, n, probes.STANDINS[n])
        yield
    finally:
        for n, f in saved.items():
            setattr(module, n, f)


def _wire(v):
    return v.detach().contiguous().numpy() if isinstance(v, torch.Tensor) else v


def call(ctx, fn, args, arrays, *, stubs=(), keep_stub=False, noise_seed=0, key=""):
    """Run probe "call": fn(*args) in the sandbox. args: {"a": name} | {"v": value} | ..."""
    cfg = {"fn": fn, "args": args, "stubs": list(stubs), "keep_stub": keep_stub}
    return ctx.probe("call", cfg, {k: _wire(v) for k, v in arrays.items()}, key=key or fn,
                     noise_seed=noise_seed, timeout_s=TIMEOUT_S)


def used_stubs(result, stubs):
    calls = result.header.get("stub_calls", {}) if result.ok else {}
    return [n for n in stubs if calls.get(n, 0) > 0]


def ref_args(args, arrays):
    """The same arguments in float64 for the reference (models built like the probe builds them)."""
    out = []
    for spec in args:
        if "a" in spec:
            v = arrays[spec["a"]]
            out.append(v.double() if v.is_floating_point() else v.clone())
        elif "v" in spec:
            out.append(spec["v"])
        elif "shape" in spec:
            out.append(tuple(spec["shape"]))
        elif spec["model"] == "probe":
            out.append(probes.probe_model(spec["T"]))
        elif spec["model"] == "zero":
            out.append(probes.zero_model)
        else:
            out.append(probes.oracle_model(arrays[spec["c"]].double(),
                                           arrays[spec["alphas"]].double()))
    return out


def _tensor_out(result, name="out"):
    if name not in result.arrays:
        kind = result.header.get("type", "?")
        raise ValueError(f"returned {'nothing usable' if kind == 'NoneType' else 'a ' + kind}")
    return result.arrays[name]


def judge(ctx, result, what, expected, tol, hint, name="out"):
    """Verdict for one probe output against a float64 expectation."""
    if not result.ok:
        return ctx.failed(result, what)
    if result.header.get("type") == "NoneType":
        return Verdict.fail(f"{what}: returned None (is there a `return`?)")
    try:
        got = _tensor_out(result, name)
    except ValueError as e:
        return Verdict.fail(f"{what}: {e}")
    expected = torch.as_tensor(expected, dtype=torch.float64)
    got = torch.as_tensor(got)
    if expected.dim() == 0 and got.numel() == 1:  # a number (the wire sends 0-d arrays as (1,))
        got = got.reshape(())
    ok, lines = compare(got, expected, tol, what=what)
    return Verdict.ok() if ok else Verdict.fail("\n".join(lines + [f"  hint: {hint}"]))


def deterministic(ctx, fn, what, args, arrays, hint, *, stubs=(), ops=OPS, key="",
                  output=None):
    """Probe fn(*args); expected = reference fn (with the same stand-ins the student's code used)."""
    result = call(ctx, fn, args, arrays, stubs=stubs, key=key)
    if not result.ok:
        return ctx.failed(result, what)
    ref = ctx.reference
    used = used_stubs(result, stubs)
    rargs = ref_args(args, arrays)

    def f(*xs):
        with standins(ref, used):
            out = getattr(ref, fn)(*xs)
        return out if output is None else out[output]

    expected = torch.as_tensor(f(*rargs), dtype=torch.float64)
    schedules = [i for i, a in enumerate(args) if a.get("a") in ("betas", "alphas")]
    tol = allowance(f, rargs, ops=ops, schedules=schedules)
    name = "out" if output is None else f"out{output}"
    verdict = judge(ctx, result, what, expected, tol, hint, name=name)
    if not verdict.passed and used:
        verdict.message += (f"\n  (your {fn} called {', '.join(used)}: it was replaced by a "
                            "stand-in here, so this verdict is about " + fn + " alone)")
    return verdict


def all_of(*verdicts):
    for v in verdicts:
        if not v.passed:
            return v
    return Verdict.ok()


# ----------------------------------------------------------------------------- q1

def q1_compute_mean(ctx):
    x = randn(11, 2, 3, 4)
    hint = "the mean is sqrt(1 - beta_t) * x_{t-1}: the square root of 1 - beta_t"
    return all_of(
        deterministic(ctx, "compute_mean", "compute_mean(x of shape (2, 3, 4), beta_t=0.3)",
                      [{"a": "x"}, {"v": 0.3}], {"x": x}, hint),
        deterministic(ctx, "compute_mean", "compute_mean(x float64 (5,), beta_t=0.9)",
                      [{"a": "x"}, {"v": 0.9}], {"x": randn(12, 5, dtype=torch.float64)}, hint,
                      key="f64"))


def q1_compute_cov(ctx):
    return deterministic(ctx, "compute_cov", "compute_cov(x of shape (2, 3), beta_t=0.3)",
                         [{"a": "x"}, {"v": 0.3}], {"x": randn(13, 2, 3)},
                         "beta_t times the d x d identity, d = x_prev.numel() (a variance: "
                         "no square root)")


def q1_forward_step(ctx):
    return deterministic(ctx, "forward_step", "forward_step(x (2, 3, 4), beta_t=0.3, noise)",
                         [{"a": "x"}, {"v": 0.3}, {"a": "noise"}],
                         {"x": randn(14, 2, 3, 4), "noise": randn(15, 2, 3, 4)},
                         "x_t = mean + sqrt(beta_t) * noise (the standard deviation is "
                         "sqrt(beta_t)); use the given noise", stubs=("compute_mean",))


# ----------------------------------------------------------------------------- q2

def _schedule_tol(values):
    return U * OPS * (values.abs() + values.abs().max())


def q2_linear_betas(ctx):
    ref = ctx.reference
    hint = "evenly spaced from beta_1 to beta_T inclusive, T values (torch.linspace)"
    out = []
    for what, args, key in (("linear_betas(7, 0.1, 0.7)", [{"v": 7}, {"v": 0.1}, {"v": 0.7}], "a"),
                            ("linear_betas(1000)", [{"v": 1000}], "b")):
        r = call(ctx, "linear_betas", args, {}, key=key)
        exp = ref.linear_betas(*[a["v"] for a in args]).double()
        out.append(judge(ctx, r, what, exp, _schedule_tol(exp), hint))
    return all_of(*out)


def _cosine_tol(T, s=0.008, max_beta=0.999):
    # beta_t = 1 - f(t)/f(t-1), f = cos^2(a): a float32 f has relative error K u (1 + 2 a tan a)
    # (the rounding of its argument a, amplified), and the ratio carries both, times r = f_t/f_{t-1}.
    steps = torch.arange(T + 1, dtype=torch.float64)
    a = (steps / T + s) / (1 + s) * math.pi / 2
    f = torch.cos(a) ** 2
    rel = U * OPS * (1 + 2 * a * torch.tan(a).abs().clamp(max=1e30))
    r = f[1:] / f[:-1]
    return (r * (rel[1:] + rel[:-1]) + U * OPS).clamp(max=1.0)


def q2_cosine_betas(ctx):
    ref = ctx.reference
    hint = ("abar_t = f(t) / f(0) with f(t) = cos^2(((t / T + s) / (1 + s)) pi / 2), "
            "beta_t = 1 - abar_t / abar_{t-1} for t = 1..T, each at most max_beta = 0.999")
    out = []
    for T in (10, 1000):
        r = call(ctx, "cosine_betas", [{"v": T}], {}, key=str(T))
        exp = ref.cosine_betas(T).double()
        out.append(judge(ctx, r, f"cosine_betas({T})", exp, _cosine_tol(T), hint))
    return all_of(*out)


def q2_closed_form(ctx):
    x0 = randn(21, 3, 4)
    betas = torch.linspace(1e-3, 0.2, 50, dtype=torch.float64)
    hint = ("abar_t is the product of the first t alphas = 1 - beta (abar_0 = 1); "
            "q(x_t | x_0) has mean sqrt(abar_t) x_0 and variance 1 - abar_t")
    out = []
    for t in (0, 1, 17, 50):
        args = [{"a": "x0"}, {"a": "betas"}, {"v": t}]
        arrays = {"x0": x0, "betas": betas}
        for i, part in ((0, "mean"), (1, "variance")):
            out.append(deterministic(ctx, "closed_form", f"closed_form(x0 (3, 4), 50 linear "
                                     f"betas, t={t}): the {part}", args, arrays, hint,
                                     key=f"t{t}", output=i, ops=OPS + 2 * t))
    return all_of(*out)


# ----------------------------------------------------------------------------- q3

def q3_normal_pdf(ctx):
    x = randn(31, 50, 3) * 1.5
    mu = torch.tensor([0.5, -1.0, 2.0])
    return deterministic(ctx, "normal_pdf", "normal_pdf(x (50, 3), mu=[0.5, -1, 2])",
                         [{"a": "x"}, {"a": "mu"}], {"x": x, "mu": mu},
                         "(2 pi)^(-n/2) exp(-||x - mu||^2 / 2), n = x.shape[1], one value per row")


def q3_gndm_mean(ctx):
    samples = torch.tensor([1.0, 2.0]) + randn(32, 1000, 2)
    # a naive float32 sum of N terms errs by up to N u sum|x|
    return deterministic(ctx, "gndm_mean", "gndm_mean(1000 samples of N([1, 2], I))",
                         [{"a": "s"}], {"s": samples},
                         "setting the gradient of sum_n log N(x_n; mu, I) to zero gives the "
                         "average of the samples over the first dimension", ops=OPS + 1000)


# ----------------------------------------------------------------------------- q4

def _stat_check(what, value, exact, stderr, hint):
    if not math.isfinite(value):
        return Verdict.fail(f"{what}: got {value}\n  hint: {hint}")
    if abs(value - exact) > SIGMAS * stderr:
        return Verdict.fail(f"{what}: got {value:.5g}, expected {exact:.5g} +- {SIGMAS * stderr:.2g} "
                            f"({SIGMAS:g} standard errors of a correct random answer)\n  hint: {hint}")
    return Verdict.ok()


def q4_noise_sequentially(ctx):
    n = 20_000
    x = torch.linspace(-2, 2, n)
    alphas = torch.tensor([0.9, 0.85, 0.8, 0.75, 0.7], dtype=torch.float64)
    hint = ("each step is z <- sqrt(alpha_t) z + sqrt(1 - alpha_t) eps_t with fresh standard "
            "normal eps_t; after all steps z_T = sqrt(abar_T) x + sqrt(1 - abar_T) eps")
    what = "noise_sequentially(x = 20000 values in [-2, 2], alphas 0.9 .. 0.7)"
    r = call(ctx, "noise_sequentially", [{"a": "x"}, {"a": "alphas"}], {"x": x, "alphas": alphas},
             noise_seed=41)
    if not r.ok:
        return ctx.failed(r, what)
    try:
        z = torch.as_tensor(_tensor_out(r)).double()
    except ValueError as e:
        return Verdict.fail(f"{what}: {e}")
    if tuple(z.shape) != (n,):
        return Verdict.fail(f"{what}: shape {tuple(z.shape)}, expected ({n},)")
    abar = float(torch.prod(alphas))
    # correct, with any draws: e = (z - sqrt(abar) x) / sqrt(1 - abar) is n iid N(0, 1)
    e = (z - math.sqrt(abar) * x.double()) / math.sqrt(1 - abar)
    xc = x.double() - x.double().mean()
    corr = float((e * xc).sum() / (xc.norm() * math.sqrt(n)))
    verdict = all_of(
        _stat_check(what + ": mean of (z_T - sqrt(abar) x) / sqrt(1 - abar)", float(e.mean()), 0.0,
                    1 / math.sqrt(n), hint),
        _stat_check(what + ": variance of (z_T - sqrt(abar) x) / sqrt(1 - abar)", float(e.var()), 1.0,
                    math.sqrt(2 / n), hint),
        _stat_check(what + ": correlation of the noise part with x", corr, 0.0,
                    1 / math.sqrt(n), hint))
    if not verdict.passed:
        return verdict
    what1 = "noise_sequentially(x, alphas = [1, 1, 1]) must return x unchanged"
    r1 = call(ctx, "noise_sequentially", [{"a": "x"}, {"a": "alphas"}],
              {"x": x[:100], "alphas": torch.ones(3, dtype=torch.float64)}, key="ones")
    return judge(ctx, r1, what1, x[:100].double(), U * OPS * x[:100].double().abs(), hint)


def q4_white_gap(ctx):
    z = randn(42, 20_000) * 1.3 + 0.2
    k = 5
    hint = ("average over num_samples draws eps ~ N(0, I) of ||eps - z||^2 / z.numel() (squared "
            "distance per coordinate)")
    what = "white_gap(z of 20000 values, num_samples=5)"
    r = call(ctx, "white_gap", [{"a": "z"}, {"v": k}], {"z": z}, noise_seed=43)
    if not r.ok:
        return ctx.failed(r, what)
    try:
        got = torch.as_tensor(_tensor_out(r)).double()
    except ValueError as e:
        return Verdict.fail(f"{what}: {e}")
    if got.numel() != 1:
        return Verdict.fail(f"{what}: expected one number, got shape {tuple(got.shape)}")
    m2 = float((z.double() ** 2).mean())
    # per coordinate (eps - z)^2 has mean 1 + z^2 and variance 2 + 4 z^2
    stderr = math.sqrt((2 + 4 * m2) / (k * z.numel()))
    return _stat_check(what, float(got.reshape(())), 1 + m2, stderr, hint)


def q4_expected_white_gap(ctx):
    x = torch.rand(3, 40, 40, generator=_gen(44)) * 2 - 1
    alphas = torch.linspace(0.99, 0.9, 30, dtype=torch.float64)
    return deterministic(ctx, "expected_white_gap",
                         "expected_white_gap(x (3, 40, 40) in [-1, 1], 30 alphas 0.99 .. 0.9)",
                         [{"a": "x"}, {"a": "alphas"}], {"x": x, "alphas": alphas},
                         "z_T = sqrt(abar_T) x + sqrt(1 - abar_T) eps'; E (eps - z)^2 per "
                         "coordinate = 1 + abar_T x^2 + 1 - abar_T, averaged over coordinates",
                         ops=OPS + x.numel())


# ----------------------------------------------------------------------------- q5

def _q5_arrays(seed=51, shape=(2, 3, 4)):
    return {"x_t": randn(seed, *shape), "x0": randn(seed + 1, *shape),
            "eps": randn(seed + 2, *shape), "betas": torch.linspace(0.01, 0.3, 20,
                                                                   dtype=torch.float64)}


def q5_posterior_mean(ctx):
    arrays = _q5_arrays()
    hint = ("coefficients sqrt(abar_{t-1}) beta_t / (1 - abar_t) on x_0 and "
            "sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) on x_t, with abar_0 = 1")
    return all_of(*[deterministic(
        ctx, "posterior_mean", f"posterior_mean(x_t, x0 (2, 3, 4), t={t}, 20 betas 0.01 .. 0.3)",
        [{"a": "x_t"}, {"a": "x0"}, {"v": t}, {"a": "betas"}], arrays, hint, key=f"t{t}",
        ops=OPS + 2 * t) for t in (1, 7, 20)])


def q5_mean_from_eps(ctx):
    arrays = _q5_arrays()
    hint = ("mu = (x_t - beta_t / sqrt(1 - abar_t) * eps) / sqrt(alpha_t): the prefactor is "
            "1 / sqrt(alpha_t) of this step, not 1 / sqrt(abar_t)")
    return all_of(*[deterministic(
        ctx, "mean_from_eps", f"mean_from_eps(x_t, eps (2, 3, 4), t={t}, 20 betas 0.01 .. 0.3)",
        [{"a": "x_t"}, {"a": "eps"}, {"v": t}, {"a": "betas"}], arrays, hint, key=f"t{t}",
        ops=OPS + 2 * t) for t in (1, 7, 20)])


def q5_mean_loss(ctx):
    arrays = _q5_arrays(55, (4, 3, 5))
    arrays["mu"] = randn(59, 4, 3, 5)
    return deterministic(
        ctx, "mean_loss", "mean_loss(mu_theta, x_t, x0 (4, 3, 5), t=7, betas, sigma2=0.05)",
        [{"a": "mu"}, {"a": "x_t"}, {"a": "x0"}, {"v": 7}, {"a": "betas"}, {"v": 0.05}], arrays,
        "one value per example: the squared norm of (posterior mean - mu_theta) over all but the "
        "first dimension, divided by 2 sigma2", stubs=("posterior_mean",), ops=OPS + 30)


def q5_noise_loss(ctx):
    arrays = {"a": randn(61, 4, 3, 5), "b": randn(62, 4, 3, 5)}
    return deterministic(
        ctx, "noise_loss", "noise_loss(eps_theta, eps of shape (4, 3, 5))",
        [{"a": "a"}, {"a": "b"}], arrays,
        "one value per example: sum over all but the first dimension of (eps - eps_theta)^2",
        ops=OPS + 15)


def q5_noise_loss_weight(ctx):
    betas = torch.linspace(0.01, 0.3, 20, dtype=torch.float64)
    hint = "lambda_t = beta_t^2 / (2 sigma2 alpha_t (1 - abar_t))"
    return all_of(*[deterministic(
        ctx, "noise_loss_weight", f"noise_loss_weight(t={t}, 20 betas 0.01 .. 0.3, sigma2=0.05)",
        [{"v": t}, {"a": "betas"}, {"v": 0.05}], {"betas": betas}, hint, key=f"t{t}",
        ops=OPS + 2 * t) for t in (1, 7, 20)])


# ----------------------------------------------------------------------------- q6

def _q6(ctx, ts, hint):
    arrays = _q5_arrays(63)
    arrays["noise"] = randn(67, 2, 3, 4)
    return all_of(*[deterministic(
        ctx, "reverse_step", f"reverse_step(x_t, eps_pred, t={t}, 20 betas 0.01 .. 0.3, noise)",
        [{"a": "x_t"}, {"a": "eps"}, {"v": t}, {"a": "betas"}, {"a": "noise"}], arrays, hint,
        stubs=("mean_from_eps",), key=f"t{t}", ops=OPS + 2 * t) for t in ts])


def q6_reverse_step_last(ctx):
    return _q6(ctx, (1,), "at t = 1, tilde-beta_1 = 0: the step returns the mean, no noise")


def q6_reverse_step(ctx):
    return _q6(ctx, (2, 11, 20), "x_{t-1} = mean + sqrt(tilde-beta_t) * noise, tilde-beta_t = "
               "(1 - abar_{t-1}) / (1 - abar_t) * beta_t (a standard deviation: the square root)")


# ----------------------------------------------------------------------------- q7

def q7_linear_alphas(ctx):
    ref = ctx.reference
    hint = "alpha_1 = first, ..., alpha_T = last, T evenly spaced values (decreasing)"
    out = []
    for what, args, key in (("linear_alphas()", [], "default"),
                            ("linear_alphas(10, 0.9, 0.5)", [{"v": 10}, {"v": 0.9}, {"v": 0.5}], "b")):
        r = call(ctx, "linear_alphas", args, {}, key=key)
        exp = ref.linear_alphas(*[a["v"] for a in args]).double()
        out.append(judge(ctx, r, what, exp, _schedule_tol(exp), hint))
    return all_of(*out)


def q7_q_sample(ctx):
    hint = ("x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise with abar_t the product of "
            "alphas[0 .. t-1] (t is 1-based), one t per image")
    out = []
    for T, ts, key in ((50, [1, 2, 10, 49, 50], "a"), (500, [1, 250, 500, 3, 77], "b")):
        arrays = {"x0": randn(71, 5, 1, 3, 3), "noise": randn(72, 5, 1, 3, 3),
                  "t": torch.tensor(ts, dtype=torch.int64),
                  "alphas": torch.linspace(0.9999, 0.98, T, dtype=torch.float64)}
        out.append(deterministic(
            ctx, "q_sample", f"q_sample(x0 (5, 1, 3, 3), t={ts}, {T} alphas 0.9999 .. 0.98, noise)",
            [{"a": "x0"}, {"a": "t"}, {"a": "alphas"}, {"a": "noise"}], arrays, hint, key=key,
            ops=OPS + 2 * max(ts)))
    return all_of(*out)


# ----------------------------------------------------------------------------- q8

def _sample_steps_with_standin(ctx, r, what, T, m, shape):
    """The student's sample delegated to reverse_step (replaced by a recording stand-in)."""
    a = r.arrays
    need = ("rs_t", "rs_x", "rs_eps", "rs_noise", "rs_out", "out")
    if any(k not in a for k in need):
        why = r.header.get("record_error", "its calls could not be recorded")
        return Verdict.fail(f"{what}: reverse_step was called with unexpected arguments ({why})")
    ts = [int(v) for v in torch.as_tensor(a["rs_t"]).tolist()]
    if ts != list(range(T, 0, -1)):
        return Verdict.fail(f"{what}: reverse_step was called with t = {ts}, expected "
                            f"{list(range(T, 0, -1))}\n  hint: loop t = T, T-1, ..., 1")
    x, eps, noise, outs = (torch.as_tensor(a[k]).double() for k in ("rs_x", "rs_eps", "rs_noise",
                                                                   "rs_out"))
    if tuple(x.shape[1:]) != (m, *shape):
        return Verdict.fail(f"{what}: reverse_step got x_t of shape {tuple(x.shape[1:])}, "
                            f"expected {(m, *shape)}")
    model = probes.probe_model(T)
    for k, t in enumerate(ts):
        exp_eps = model(x[k], torch.full((m,), t))
        ok, lines = compare(eps[k], exp_eps, U * OPS * (1 + exp_eps.abs()),
                            what=f"{what}: eps_pred handed to reverse_step at t={t}")
        if not ok:
            return Verdict.fail("\n".join(lines + ["  hint: eps_pred = eps_model(x_t, t) with "
                                                   "the current x_t and a (m,) tensor of t"]))
        if k + 1 < len(ts) and not torch.allclose(x[k + 1], outs[k], rtol=0, atol=0):
            return Verdict.fail(f"{what}: the x_t passed at t={ts[k + 1]} is not what the step "
                                f"at t={t} returned\n  hint: feed each step's output to the next")
    draws = [x[0]] + [noise[k] for k in range(T)]
    for i in range(len(draws)):
        for j in range(i + 1, len(draws)):
            if torch.equal(draws[i], draws[j]):
                return Verdict.fail(f"{what}: the same noise was used twice (x_T and the step "
                                    "noises must be fresh draws)")
    got = torch.as_tensor(a["out"]).double()
    ok, lines = compare(got, outs[-1], 0.0, what=f"{what}: the returned images")
    return Verdict.ok() if ok else Verdict.fail("\n".join(lines + ["  hint: return x_0, the "
                                                                   "output of the step at t = 1"]))


def q8_sample_steps(ctx):
    T, m, shape = 6, 3, (1, 2, 2)
    alphas = torch.linspace(0.95, 0.7, T, dtype=torch.float64)
    what = f"sample(eps_model, m={m}, {T} alphas 0.95 .. 0.7, image_shape={shape})"
    r = call(ctx, "sample", [{"model": "probe", "T": T, "keep": True}, {"v": m}, {"a": "alphas"},
                             {"v": list(shape)}], {"alphas": alphas},
             stubs=("reverse_step",), keep_stub=True, noise_seed=81)
    if not r.ok:
        return ctx.failed(r, what)
    if r.header.get("type") != "tensor":
        return Verdict.fail(f"{what}: returned a {r.header.get('type')}, expected a tensor")
    if used_stubs(r, ("reverse_step",)):
        return _sample_steps_with_standin(ctx, r, what, T, m, shape)
    # Written out in full: if every training image is c, the exact noise predictor makes the last
    # step (t = 1, no noise) return c whatever x_1 is -- provided the steps run T..1 and eps_model
    # gets the current t.
    c = torch.tensor([[[0.5, -0.25], [0.75, -1.0]]])
    r2 = call(ctx, "sample", [{"model": "oracle", "c": "c", "alphas": "alphas"}, {"v": m},
                              {"a": "alphas"}, {"v": list(shape)}], {"alphas": alphas, "c": c},
              noise_seed=82, key="oracle")
    return judge(ctx, r2, what + " with the exact noise predictor of a one-image data set",
                 c.double().expand(m, *shape), 1e-4,
                 "run t = T, ..., 1 (the last step at t = 1 adds no noise) and call "
                 "eps_model(x, t) with a (m,) int64 tensor of the current t in 1..T")


def q8_sample_noise(ctx):
    m, shape = 8000, (1, 4, 4)
    alphas = torch.tensor([0.95, 0.5, 0.6, 0.7], dtype=torch.float64)
    what = f"sample(zero eps_model, m={m}, alphas={alphas.tolist()}, image_shape={shape})"
    r = call(ctx, "sample", [{"model": "zero"}, {"v": m}, {"a": "alphas"}, {"v": list(shape)}],
             {"alphas": alphas}, stubs=("reverse_step",), noise_seed=83, key="stats")
    if not r.ok:
        return ctx.failed(r, what)
    try:
        x = torch.as_tensor(_tensor_out(r)).double()
    except ValueError as e:
        return Verdict.fail(f"{what}: {e}")
    if tuple(x.shape) != (m, *shape):
        return Verdict.fail(f"{what}: shape {tuple(x.shape)}, expected {(m, *shape)}")
    T = len(alphas)
    mean, var = 0.0, 1.0   # x_T ~ N(0, I)
    if used_stubs(r, ("reverse_step",)):
        # the stand-in step: x <- 0.9 x + 0.1 eps + 0.5 noise + 0.01 t, with eps = 0
        for t in range(T, 0, -1):
            mean, var = 0.9 * mean + 0.01 * t, 0.81 * var + 0.25
        hint = "start from x_T = torch.randn(m, *image_shape) and hand every step fresh noise"
    else:
        abar = torch.cumprod(alphas, 0)
        for t in range(T, 0, -1):
            a, ab, ab_prev = float(alphas[t - 1]), float(abar[t - 1]), float(abar[t - 2]) if t > 1 else 1.0
            var = var / a + (1 - ab_prev) / (1 - ab) * (1 - a)
        hint = ("x_T ~ N(0, I); each step adds sqrt(tilde-beta_t) times fresh standard normal "
                "noise, tilde-beta_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t (none at t = 1)")
    n = x.numel()
    # all n values are iid N(mean, var) when correct
    return all_of(
        _stat_check(what + ": mean of the samples", float(x.mean()), mean, math.sqrt(var / n), hint),
        _stat_check(what + ": variance of the samples", float(x.var()), var,
                    var * math.sqrt(2 / n), hint))


# ----------------------------------------------------------------------------- q9

def q9_training_loss(ctx):
    T = 50
    arrays = {"x0": randn(91, 6, 1, 4, 4), "noise": randn(92, 6, 1, 4, 4),
              "t": torch.tensor([1, 5, 10, 25, 49, 50], dtype=torch.int64),
              "alphas": torch.linspace(0.9999, 0.98, T, dtype=torch.float64)}
    return deterministic(
        ctx, "training_loss", "training_loss(eps_model, x0 (6, 1, 4, 4), t, noise, 50 alphas)",
        [{"model": "probe", "T": T}, {"a": "x0"}, {"a": "t"}, {"a": "noise"}, {"a": "alphas"}],
        arrays, "the mean over batch and pixels of (eps_model(x_t, t) - noise)^2, x_t = "
        "q_sample(x0, t, alphas, noise): compare with the noise, not with x0",
        stubs=("q_sample",), ops=OPS + 96 + 2 * T)


TESTS = {
    "q1_compute_mean": q1_compute_mean,
    "q1_compute_cov": q1_compute_cov,
    "q1_forward_step": q1_forward_step,
    "q2_linear_betas": q2_linear_betas,
    "q2_cosine_betas": q2_cosine_betas,
    "q2_closed_form": q2_closed_form,
    "q3_normal_pdf": q3_normal_pdf,
    "q3_gndm_mean": q3_gndm_mean,
    "q4_noise_sequentially": q4_noise_sequentially,
    "q4_white_gap": q4_white_gap,
    "q4_expected_white_gap": q4_expected_white_gap,
    "q5_posterior_mean": q5_posterior_mean,
    "q5_mean_from_eps": q5_mean_from_eps,
    "q5_mean_loss": q5_mean_loss,
    "q5_noise_loss": q5_noise_loss,
    "q5_noise_loss_weight": q5_noise_loss_weight,
    "q6_reverse_step_last": q6_reverse_step_last,
    "q6_reverse_step": q6_reverse_step,
    "q7_linear_alphas": q7_linear_alphas,
    "q7_q_sample": q7_q_sample,
    "q8_sample_steps": q8_sample_steps,
    "q8_sample_noise": q8_sample_noise,
    "q9_training_loss": q9_training_loss,
}
