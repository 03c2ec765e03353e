"""Hidden graded tests of part 2, binary_diffusion.py (staff only; never shipped to students).

Each test is `fn(ctx) -> Verdict`, registered under the id that rubric.toml (beside this file) gives
points and visibility to. Student code runs in the sandbox (probes.py) and only returns tensors;
verdicts are computed here against the reference (solutions/binary_diffusion.py).

Isolation, so that one bug costs points in one function only: every probe injects the reference's
schedule buffers (p_replaced, p_same) into the student's object (a failing __init__ is bypassed).
reverse_probs and p_loss run twice, once with the student's own helpers and once with stand-ins
for q_posterior / q_sample / reverse_probs / logits_to_probs (probes.py); either run matching
its expected value passes, so a correct function passes whether or not it calls the helpers, and
a bug in a helper costs nothing here. p_sample runs with its own reverse_probs and with a
stand-in, p_sample_loop with p_sample replaced by a known map, sample with p_sample_loop replaced
by a recorder, forward with p_loss replaced by a recorder.

Randomness: functions that take uniforms get them from the grader, placed at least MARGIN away
from the thresholds they are compared with, so that no float32 rounding can flip a sample; where a
function draws its own, the probe answers every draw from probe_uniform (any way of drawing gets
the same numbers), or the verdict is a statistical test whose false-alarm rate is ALPHA.

Tolerances: `allowance` propagates float32 rounding of every input through the formula by
autograd (GUIDE section 7): ops * u * (sum_i |df/dx_i * x_i| + |f|), u = 2**-24.
"""

import math
import statistics

import torch

from autograder.checks import U32, Verdict, compare

from .probes import (
    probe_logits_class,
    probe_uniform,
    stub_p_sample_value,
    stub_posterior,
    stub_q_sample,
)

TESTS = {}
K = 16.0          # float32 operations per output, times 2 (see autograder/checks.py)
MARGIN = 1e-4     # distance of every deciding uniform from its threshold (>> float32 rounding)
ALPHA = 1e-6      # false-alarm rate of each statistical verdict
CHI2_4DF = 33.38  # chi-square quantile at 1 - ALPHA with 4 degrees of freedom (scipy chi2.ppf)


def graded(test_id):
    def register(fn):
        TESTS[test_id] = fn
        return fn
    return register


def z_quantile(k=1):
    """Two-sided normal quantile for k simultaneous checks at total false-alarm rate ALPHA."""
    return statistics.NormalDist().inv_cdf(1 - ALPHA / (2 * k))


def allowance(f, inputs, ops=K):
    """ops * u * (sum_i |df/dx_i * x_i| + |f|) for an element-wise f of same-shape inputs.

    Element-wise, so the gradient of f(...).sum() holds each element's own derivative (reverse
    mode here: torch.func's forward mode costs seconds of imports in the grader).
    """
    xs = [torch.as_tensor(x, dtype=torch.float64).clone().requires_grad_(True) for x in inputs]
    value = f(*xs)
    grads = torch.autograd.grad(value.sum(), xs, allow_unused=True)
    cond = sum((g * x).abs() for g, x in zip(grads, xs, strict=True) if g is not None)
    return (ops * U32 * (cond + value.abs()) + 1e-30).detach()


def fail(lines, hint=None):
    return Verdict.fail("\n".join(lines) + (f"\n  hint: {hint}" if hint else ""))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def signs(seed, *shape):
    return torch.where(torch.rand(*shape, generator=_gen(seed)) < 0.5, 1.0, -1.0)


def uniforms_away(seed, thresholds):
    """Uniforms of thresholds' shape, float32, each at least MARGIN from every threshold given
    (a tensor broadcastable to the shape, or a list of them)."""
    ths = thresholds if isinstance(thresholds, list) else [thresholds]
    shape = torch.broadcast_shapes(*[th.shape for th in ths])
    g = _gen(seed)
    u = torch.rand(shape, generator=g, dtype=torch.float64)
    for _ in range(200):
        bad = torch.zeros(shape, dtype=torch.bool)
        for th in ths:
            bad |= (u - th.double()).abs() < MARGIN
        if not bad.any():
            return u.float()
        u[bad] = torch.rand(int(bad.sum()), generator=g, dtype=torch.float64)
    raise RuntimeError("could not place the uniforms")


def reference_of(ctx, T, delta, channels=1, image_size=4, scale=1.5):
    key = ("binary", T, delta, channels, image_size, scale)
    if key not in ctx.cache:
        ctx.cache[key] = ctx.reference.BinaryDiffusion(
            probe_logits_class()(scale), image_size=image_size, channels=channels, timesteps=T,
            delta=delta)
    return ctx.cache[key]


def buffers(ctx, T, delta):
    ref = reference_of(ctx, T, delta)
    return {"buf_p_replaced": ref.p_replaced, "buf_p_same": ref.p_same}


def cfg_of(T, delta, channels=1, image_size=4, **extra):
    return dict(T=T, delta=delta, channels=channels, image_size=image_size, **extra)


def col(v, like):
    return v.reshape(-1, *([1] * (like.dim() - 1)))


# ------------------------------------------------------------------ schedule

SCHEDULE_CASES = [(0.001, 1000), (0.05, 50), (0.2, 10), (0.5, 3), (0.3, 1)]


def _schedule(ctx, which):
    for delta, T in SCHEDULE_CASES:
        t = torch.arange(T + 1)
        what = f"schedule (delta={delta}, t=0..{T})"
        r = ctx.probe("schedule", {"delta": delta}, {"t": t}, key=f"s{delta}-{T}")
        if not r.ok:
            return ctx.failed(r, what)
        if not r.header.get("tuple"):
            return fail([f"{what}: should return a tuple (p_replaced, p_same)"])
        p_replaced, p_same = ctx.reference.schedule(t, delta)
        expected = p_replaced if which == "p_replaced" else p_same
        # (1 - 2 delta)^t from a float32 delta: relative t * 2 delta / (1 - 2 delta) * u, plus
        # the evaluation; 1 - keep and (1 + keep) / 2 add one absolute u each.
        keep = (1 - 2 * delta) ** t.double()
        tol = K * U32 * (1 + keep * (1 + t * 2 * delta / max(1 - 2 * delta, 1e-12)))
        ok, lines = compare(r.arrays[which], expected, tol, what=f"{what}: {which}")
        if not ok:
            return fail(lines, {
                "p_replaced": "a pixel is left alone at one step with probability 1 - 2 delta "
                              "(not 1 - delta), independently at each of the t steps.",
                "p_same": "Y_t equals Y_0 if the pixel was never replaced, or if it was and the "
                          "last fresh coin happened to land on Y_0 (probability 1/2)."}[which])
    return Verdict.ok()


@graded("schedule_replaced")
def schedule_replaced(ctx):
    return _schedule(ctx, "p_replaced")


@graded("schedule_same")
def schedule_same(ctx):
    return _schedule(ctx, "p_same")


# ------------------------------------------------------------------ logits_to_probs

@graded("logits_to_probs")
def logits_to_probs(ctx):
    logits = torch.randn(3, 2, 4, 4, generator=_gen(7)) * 4
    logits.view(-1)[:9] = torch.tensor([-1e4, -50.0, -5.0, -1.0, 0.0, 1.0, 5.0, 50.0, 1e4])
    what = "logits_to_probs (logits (3, 2, 4, 4), including +-50 and +-1e4)"
    r = ctx.probe("logits_to_probs", {}, {"logits": logits}, key="l")
    if not r.ok:
        return ctx.failed(r, what)
    expected = torch.sigmoid(logits.double())
    # an equivalent form such as (1 + tanh(x / 2)) / 2 is good to a few u absolutely, not
    # relatively, where the probability is small
    ok, lines = compare(r.arrays["out"], expected, K * U32 * (1 + expected), what=what)
    if not ok:
        return fail(lines, "written question 8c: which activation maps every real number into [0, 1]? "
                           "It must not overflow to NaN at +-1e4.")
    return Verdict.ok()


# ------------------------------------------------------------------ q_sample

Q_CASES = [(50, 0.05, 6, 3, 4), (1000, 0.001, 4, 1, 4), (10, 0.2, 5, 1, 3), (1, 0.3, 2, 2, 2)]


def _mixed_t(T, b, seed):
    t = torch.randint(1, T + 1, (b,), generator=_gen(seed))
    t[0], t[-1] = T, 1
    if b > 2:
        t[1] = min(2, T)
    return t


@graded("q_sample_values")
def q_sample_values(ctx):
    for k, (T, delta, b, c, s) in enumerate(Q_CASES):
        verdict = _q_sample(ctx, k, T, delta, b, c, s, check_draws=False)
        if not verdict.passed:
            return verdict
    return Verdict.ok()


@graded("q_sample_draws_nothing")
def q_sample_draws_nothing(ctx):
    return _q_sample(ctx, 0, *Q_CASES[0], check_draws=True)


def _q_sample(ctx, k, T, delta, b, c, s, check_draws):
    ref = reference_of(ctx, T, delta)
    y_0, t = signs(300 + k, b, c, s, s), _mixed_t(T, b, 310 + k)
    u_r = uniforms_away(320 + k, col(ref.p_replaced[t], y_0).expand(y_0.shape))
    u_c = uniforms_away(330 + k, torch.full(y_0.shape, 0.5))
    arrays = dict(buffers(ctx, T, delta), y_0=y_0, t=t, u_replace=u_r, u_coin=u_c)
    r = ctx.probe("q_sample", cfg_of(T, delta, c, s), arrays, key=f"q{k}")
    what = f"q_sample (T={T}, delta={delta}, y_0 {tuple(y_0.shape)}, t={t.tolist()})"
    if not r.ok:
        return ctx.failed(r, what)
    if check_draws:
        if r.header.get("draws"):
            return fail([f"{what}: drew {r.header['draws']} random tensor(s) of its own"],
                        "use the uniforms u_replace and u_coin it is given.")
        return Verdict.ok()
    expected = ref.q_sample(y_0, t, u_r, u_c).double()
    ok, lines = compare(r.arrays["out"], expected, 0.0, what=what)
    if not ok:
        return fail(lines, "replace pixel j where u_replace[j] < p_replaced[t] (each example's own "
                           "t); a replaced pixel becomes +1 where u_coin[j] < 1/2, else -1.")
    return Verdict.ok()


# ------------------------------------------------------------------ q_posterior

POSTERIOR_CASES = [(50, 0.05), (1000, 0.001), (10, 0.3), (2, 0.1)]


def posterior_allowance(same_prev, delta, y_t, y_0):
    """Rounding allowance of (B3): the prior rho and 1 - rho, delta and 1 - delta, each
    perturbed by a relative u (a student may form any of them in float32)."""
    def f(s, m, d, e):
        rho, not_rho = torch.where(y_0 > 0, s, m), torch.where(y_0 > 0, m, s)
        lp, lm = torch.where(y_t > 0, e, d), torch.where(y_t > 0, d, e)
        return rho * lp / (rho * lp + not_rho * lm)

    s = same_prev.double().expand_as(y_t)
    return allowance(f, [s, 1 - s, torch.full_like(s, delta), torch.full_like(s, 1 - delta)])


def _posterior_inputs(T):
    steps = sorted({1, min(2, T), min(3, T), max(1, T // 2), max(1, T - 1), T})
    b = len(steps)
    y_t = torch.tensor([1.0, 1.0, -1.0, -1.0]).reshape(1, 1, 1, 4).repeat(b, 2, 2, 1)
    y_0 = torch.tensor([1.0, -1.0, 1.0, -1.0]).reshape(1, 1, 1, 4).repeat(b, 2, 2, 1)
    return y_t, y_0, torch.tensor(steps)


def _q_posterior(ctx, sign):
    for T, delta in POSTERIOR_CASES:
        ref = reference_of(ctx, T, delta)
        y_t, y_0, t = _posterior_inputs(T)
        r = ctx.probe("q_posterior", cfg_of(T, delta, 2, 2), dict(buffers(ctx, T, delta), y_t=y_t,
                      y_0=y_0, t=t), key=f"p{T}-{delta}")
        what = (f"q_posterior (T={T}, delta={delta}, t={t.tolist()}, where y_0 = "
                f"{'+1' if sign > 0 else '-1'})")
        if not r.ok:
            return ctx.failed(r, what)
        expected = ref.q_posterior(y_t, y_0, t).double()
        # exact Bayes in float64 from the float32 buffer the student reads
        same_prev = col(ref.p_same[t - 1].double(), y_t)
        tol = posterior_allowance(same_prev, delta, y_t, y_0)
        got = torch.as_tensor(r.arrays["out"]).double()
        if tuple(got.shape) != tuple(y_t.shape):
            ok, lines = compare(got, expected, tol, what=what)
            return fail(lines)
        mask = y_0 > 0 if sign > 0 else y_0 < 0
        ok, lines = compare(got[mask], expected[mask], tol[mask], what=what + " (those pixels)")
        if not ok:
            return fail(lines, "the prior P(Y_{t-1} = +1 | Y_0 = x) is p_same[t - 1] for x = +1 "
                               "and 1 - p_same[t - 1] for x = -1; the likelihood of y_t is "
                               "1 - delta (same sign) or delta; then Bayes' rule.")
    return Verdict.ok()


@graded("q_posterior_plus")
def q_posterior_plus(ctx):
    return _q_posterior(ctx, +1)


@graded("q_posterior_minus")
def q_posterior_minus(ctx):
    return _q_posterior(ctx, -1)


# ------------------------------------------------------------------ reverse_probs

@graded("reverse_probs_values")
def reverse_probs_values(ctx):
    for k, (T, delta) in enumerate([(50, 0.05), (10, 0.3)]):
        ref = reference_of(ctx, T, delta)
        y_t = signs(400 + k, 4, 2, 3, 3)
        t = torch.tensor([1, 2, max(1, T // 2), T])
        logits = torch.randn(y_t.shape, generator=_gen(410 + k)) * 3
        logits.view(-1)[:2] = torch.tensor([30.0, -30.0])
        r = ctx.probe("reverse_probs", cfg_of(T, delta, 2, 3), dict(
            buffers(ctx, T, delta), logits=logits, y_t=y_t, t=t), key=f"r{k}")
        what = f"reverse_probs (T={T}, delta={delta}, t={t.tolist()})"
        if not r.ok:
            return ctx.failed(r, what)
        h = torch.sigmoid(logits.double())
        ones = torch.ones_like(y_t)
        # with the stand-in posteriors
        sa, sb = stub_posterior(y_t.double(), ones.double(), t), stub_posterior(
            y_t.double(), -ones.double(), t)
        iso = h * sa + (1 - h) * sb
        ok_iso, lines = compare(r.arrays.get("isolated"), iso, K * U32 * (1 + iso), what=what)
        if ok_iso:
            continue
        # with the student's own helpers: the full reference
        a, b = ref.q_posterior(y_t, ones, t).double(), ref.q_posterior(y_t, -ones, t).double()
        same_prev = col(ref.p_same[t - 1].double(), y_t)
        tol = (K * U32 * (1 + h * a + (1 - h) * b) + posterior_allowance(same_prev, delta, y_t, ones)
               + posterior_allowance(same_prev, delta, y_t, -ones))
        ok_own, _ = compare(r.arrays.get("own"), h * a + (1 - h) * b, tol, what=what)
        if not ok_own:
            return fail(lines, "Q = x0_hat * q_posterior(y_t, +1, t) + (1 - x0_hat) * "
                               "q_posterior(y_t, -1, t), with x0_hat = logits_to_probs(logits).")
    return Verdict.ok()


# ------------------------------------------------------------------ p_loss

LOSS_T, LOSS_DELTA, LOSS_SHAPE = 20, 0.05, (6, 2, 3, 3)
LOSS_STEPS = {"kl": [2, 3, 7, 12, 19, 20], "t1": [1, 1, 1, 1, 1, 1], "extreme": [1, 1, 2, 5, 20, 1]}


def _kl_float64(p, a, b, logits):
    """Sum over pixels, mean over the batch, of KL(Bern(p) || Bern(h a + (1 - h) b)), float64,
    stable; also its float32 rounding allowance (one term per pixel, see the module doc)."""
    ls, lsn = torch.nn.functional.logsigmoid(logits), torch.nn.functional.logsigmoid(-logits)
    log_q = torch.logaddexp(ls + torch.log(a), lsn + torch.log(b))
    log_nq = torch.logaddexp(ls + torch.log1p(-a), lsn + torch.log1p(-b))
    ent = torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p)
    cross = p * log_q + (1 - p) * log_nq
    kl = ent - cross
    q = log_q.exp()
    # each term good to a few u relative; q and 1 - q formed in float32 add u / q, u / (1 - q)
    sens = (ent.abs() + (p * log_q).abs() + ((1 - p) * log_nq).abs()
            + torch.where(p > 0, p / q.clamp_min(1e-30), 0.0).clamp_max(1e6)
            + torch.where(p < 1, (1 - p) / (1 - q).clamp_min(1e-30), 0.0).clamp_max(1e6))
    b = kl.shape[0]
    return kl.reshape(b, -1).sum(1).mean(), K * U32 * sens.reshape(b, -1).sum(1).mean()


def _loss_probe(ctx, case):
    scale = 1e4 if case == "extreme" else 1.5
    y_0 = signs(500, *LOSS_SHAPE)
    g = _gen(501)
    u_r = torch.rand(LOSS_SHAPE, generator=g)
    u_c = torch.rand(LOSS_SHAPE, generator=g)
    t = torch.tensor(LOSS_STEPS[case])
    r = ctx.probe("p_loss", cfg_of(LOSS_T, LOSS_DELTA, 2, 3, scale=scale), dict(
        buffers(ctx, LOSS_T, LOSS_DELTA), y_0=y_0, t=t, u_replace=u_r, u_coin=u_c), key=case)
    return r, y_0, t, u_r, u_c, scale


def _loss_expected(ctx, y_0, t, u_r, u_c, scale, isolated):
    ref = reference_of(ctx, LOSS_T, LOSS_DELTA, 2, 3, scale)
    if isolated:
        y_t = stub_q_sample(y_0, t, u_r, u_c).double()
        post = lambda y, x: stub_posterior(y, x, t)  # noqa: E731
    else:
        y_t = ref.q_sample(y_0, t, u_r, u_c).double()
        post = lambda y, x: ref.q_posterior(y.float(), x.float(), t).double()  # noqa: E731
    logits = probe_logits_class()(scale).double()(y_t, t).detach()
    ones = torch.ones_like(y_t)
    value, tol = _kl_float64(post(y_t, y_0.double()), post(y_t, ones), post(y_t, -ones), logits)
    return y_t, value, tol


def _p_loss(ctx, case, hint):
    r, y_0, t, u_r, u_c, scale = _loss_probe(ctx, case)
    what = (f"p_loss (T={LOSS_T}, delta={LOSS_DELTA}, y_0 {tuple(y_0.shape)}, t={t.tolist()}"
            + (", logits of size 1e4)" if case == "extreme" else ")"))
    if not r.ok:
        return ctx.failed(r, what)
    first = None
    for tag in ("isolated", "own"):
        if f"{tag}_loss" not in r.arrays:
            continue
        _, expected, tol = _loss_expected(ctx, y_0, t, u_r, u_c, scale, tag == "isolated")
        if case == "extreme":
            tol = tol + 1e-5 * expected.abs()
        got = torch.as_tensor(r.arrays[f"{tag}_loss"]).double().reshape(-1)
        ok, lines = compare(got[:1] if got.numel() == 1 else got, expected.reshape(1), tol,
                            what=what)
        if ok and case == "extreme":
            grad = r.arrays.get(f"{tag}_grad")
            if grad is None or not torch.isfinite(torch.as_tensor(grad)).all():
                ok, lines = False, [f"{what}: the gradient of the loss is not finite (or the loss "
                                    "carries none)"]
        if ok:
            return Verdict.ok()
        first = first or lines
    return fail(first or [f"{what}: returned no loss"], hint)


@graded("p_loss_kl")
def p_loss_kl(ctx):
    return _p_loss(ctx, "kl", "KL(P || Q) = P log(P / Q) + (1 - P) log((1 - P) / (1 - Q)) with P "
                              "the posterior at Y_0 = y_0 (the target first), summed over the "
                              "pixels of each image and averaged over the batch.")


@graded("p_loss_t1")
def p_loss_t1(ctx):
    return _p_loss(ctx, "t1", "at t = 1 the target P is exactly 0 or 1: the terms with P = 0 "
                              "or 1 - P = 0 are 0 (0 log 0 = 0; torch.xlogy), leaving -log Q(y_0).")


@graded("p_loss_extreme")
def p_loss_extreme(ctx):
    return _p_loss(ctx, "extreme", "work in log space: log Q = logaddexp(logsigmoid(l) + log a, "
                                   "logsigmoid(-l) + log b); never log of a probability that "
                                   "rounded to 0.")


@graded("p_loss_model_call")
def p_loss_model_call(ctx):
    r, y_0, t, u_r, u_c, scale = _loss_probe(ctx, "kl")
    what = f"p_loss (T={LOSS_T}, t={t.tolist()})"
    if not r.ok:
        return ctx.failed(r, what)
    problems = []
    for tag in ("isolated", "own"):
        if f"{tag}_loss" not in r.arrays:
            continue
        y_t, _, _ = _loss_expected(ctx, y_0, t, u_r, u_c, scale, tag == "isolated")
        calls = r.header.get(f"{tag}_calls", 0)
        if calls != 1:
            problems.append(f"{what}: called the model {calls} times, expected once")
            continue
        if not r.header.get(f"{tag}_requires_grad"):
            problems.append(f"{what}: the loss carries no gradient (computed under no_grad, "
                            "detached, or with .item()?)")
            continue
        ok_y, _ = compare(r.arrays.get(f"{tag}_model_y"), y_t, 0.0, what=what)
        ok_t, _ = compare(r.arrays.get(f"{tag}_model_t"), t.double(), 0.0, what=what)
        if ok_y and ok_t:
            return Verdict.ok()
        problems.append(f"{what}: the model was not called on (q_sample(y_0, t, u_replace, "
                        "u_coin), t)")
    return fail(problems[:1] or [f"{what}: returned no loss"],
                "logits = self.model(y_t, t) once, with y_t from self.q_sample and the given t.")


# ------------------------------------------------------------------ forward

FWD_T, FWD_SHAPE = 5, (800, 1, 2, 2)


def _forward(ctx):
    y_0 = signs(600, *FWD_SHAPE)
    r = ctx.probe("forward_isolated", cfg_of(FWD_T, 0.1, 1, 2),
                  dict(buffers(ctx, FWD_T, 0.1), y_0=y_0), key="f")
    return r, y_0


@graded("forward_t")
def forward_t(ctx):
    r, y_0 = _forward(ctx)
    what = f"forward (T={FWD_T}, batch {FWD_SHAPE[0]})"
    if not r.ok:
        return ctx.failed(r, what)
    if r.header.get("p_loss_calls") != 1:
        return fail([f"{what}: called self.p_loss {r.header.get('p_loss_calls')} times, expected "
                     "once"])
    ret = torch.as_tensor(r.arrays["ret"]).double().reshape(-1)
    if ret.numel() != 1 or float(ret[0]) != 3.5:
        return fail([f"{what}: should return what p_loss returns"])
    if r.header.get("t_dtype") != "torch.int64":
        return fail([f"{what}: t should be an int64 tensor, got {r.header.get('t_dtype')}"])
    t = torch.as_tensor(r.arrays["t"])
    if tuple(t.shape) != (FWD_SHAPE[0],):
        return fail([f"{what}: t should have shape ({FWD_SHAPE[0]},), one step per example; got "
                     f"{tuple(t.shape)}"])
    values = sorted(set(t.tolist()))
    if values[0] < 1 or values[-1] > FWD_T:
        return fail([f"{what}: t takes values {values}; the steps are 1..{FWD_T}"],
                    "torch.randint(low, high) excludes high.")
    counts = torch.bincount(t.long(), minlength=FWD_T + 1)[1:].double()
    expected = FWD_SHAPE[0] / FWD_T
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    if chi2 > CHI2_4DF:
        return fail([f"{what}: counts of t = 1..{FWD_T}: {counts.long().tolist()}; not uniform "
                     f"(chi-square {chi2:.1f} > {CHI2_4DF}, false-alarm rate {ALPHA:g})"],
                    "draw t independently for each example, uniformly on 1..T.")
    return Verdict.ok()


@graded("forward_uniforms")
def forward_uniforms(ctx):
    r, y_0 = _forward(ctx)
    what = f"forward (T={FWD_T}, batch {FWD_SHAPE[0]})"
    if not r.ok:
        return ctx.failed(r, what)
    if "u_replace" not in r.arrays:
        return fail([f"{what}: did not call self.p_loss"])
    u_r = torch.as_tensor(r.arrays["u_replace"]).double()
    u_c = torch.as_tensor(r.arrays["u_coin"]).double()
    n = y_0.numel()
    z = z_quantile(4)
    for name, u in (("u_replace", u_r), ("u_coin", u_c)):
        if tuple(u.shape) != tuple(y_0.shape):
            return fail([f"{what}: {name} has shape {tuple(u.shape)}, expected the images' "
                         f"{tuple(y_0.shape)}"])
        if float(u.min()) < 0 or float(u.max()) >= 1:
            return fail([f"{what}: {name} is not in [0, 1)"], "draw with self.uniform_like.")
        if abs(float(u.mean()) - 0.5) > z * math.sqrt(1 / 12 / n):
            return fail([f"{what}: {name} has mean {float(u.mean()):.3f}; uniforms on [0, 1) "
                         f"average 1/2"], "draw with self.uniform_like.")
    corr = float(((u_r - u_r.mean()) * (u_c - u_c.mean())).mean() / (u_r.std() * u_c.std()))
    if abs(corr) > z / math.sqrt(n):
        return fail([f"{what}: u_replace and u_coin are correlated ({corr:.3f}); they must be two "
                     "independent draws"])
    return Verdict.ok()


# ------------------------------------------------------------------ p_sample

PS_T, PS_DELTA, PS_SHAPE, PS_STEPS = 20, 0.1, (4, 2, 3, 3), (1, 2, 10, 20)


def _p_sample_inputs(ctx, step):
    ref = reference_of(ctx, PS_T, PS_DELTA, 2, 3)
    y_t = signs(700 + step, *PS_SHAPE)
    t = torch.full((PS_SHAPE[0],), step, dtype=torch.long)
    with torch.no_grad():
        logits = probe_logits_class()(1.5)(y_t, t)
        q_ref = ref.reverse_probs(logits, y_t, t)
        q_stub = torch.sigmoid(0.5 * logits + 0.2 * y_t)
    u = uniforms_away(710 + step, [q_ref, q_stub])
    seed = 5 + step * 100  # the drawn uniforms must keep the same margin
    while True:
        drawn = probe_uniform(seed, 0, PS_SHAPE).double()
        if ((drawn - q_ref.double()).abs().min() >= MARGIN
                and (drawn - q_stub.double()).abs().min() >= MARGIN):
            break
        seed += 1
    return y_t, t, u, seed, q_ref, q_stub, drawn


def _p_sample(ctx, mode):
    for step in PS_STEPS:
        y_t, t, u, seed, q_ref, q_stub, drawn = _p_sample_inputs(ctx, step)
        r = ctx.probe("p_sample", cfg_of(PS_T, PS_DELTA, 2, 3, seed=seed), dict(
            buffers(ctx, PS_T, PS_DELTA), y_t=y_t, t=t, u=u), key=f"ps{step}")
        what = f"p_sample (T={PS_T}, t={step}, " + ("given u)" if mode == "given" else "u drawn)")
        if not r.ok:
            return ctx.failed(r, what)
        uu = u.double() if mode == "given" else drawn
        first = None
        for tag, q in (("isolated", q_stub), ("own", q_ref)):
            got = r.arrays.get(f"{tag}_{mode}")
            if got is None:
                continue
            expected = torch.where(uu < q.double(), 1.0, -1.0)
            ok, lines = compare(got, expected, 0.0, what=what)
            if ok:
                break
            first = first or lines
        else:
            return fail(first or [f"{what}: returned nothing"], (
                "return samples in {-1, +1}: +1 where u < Q_t(y_t) = reverse_probs(model(y_t, t), "
                "y_t, t), else -1." if mode == "given" else
                "when u is None, draw it with self.uniform_like(y_t.shape, y_t.device)."))
    return Verdict.ok()


@graded("p_sample_values")
def p_sample_values(ctx):
    return _p_sample(ctx, "given")


@graded("p_sample_draws")
def p_sample_draws(ctx):
    return _p_sample(ctx, "drawn")


# ------------------------------------------------------------------ p_sample_loop

LOOP_T, LOOP_SHAPE = 7, (3, 1, 3, 3)


def _loop(ctx):
    y_T = signs(800, *LOOP_SHAPE)
    r = ctx.probe("p_sample_loop_isolated", cfg_of(LOOP_T, 0.1, 1, 3),
                  dict(buffers(ctx, LOOP_T, 0.1), y_T=y_T), key="loop")
    return r, y_T


@graded("p_sample_loop_order")
def p_sample_loop_order(ctx):
    r, _ = _loop(ctx)
    what = f"p_sample_loop (T={LOOP_T})"
    if not r.ok:
        return ctx.failed(r, what)
    steps = r.header.get("steps")
    if steps != list(range(LOOP_T, 0, -1)):
        return fail([f"{what}: called p_sample with t = {steps}, expected "
                     f"{list(range(LOOP_T, 0, -1))}"],
                    "the reverse chain runs from t = T down to t = 1.")
    if not r.header.get("t_ok"):
        return fail([f"{what}: t should be a (B,) int64 tensor filled with the step"])
    return Verdict.ok()


@graded("p_sample_loop_chain")
def p_sample_loop_chain(ctx):
    r, y_T = _loop(ctx)
    what = f"p_sample_loop (T={LOOP_T}, y_T {tuple(y_T.shape)})"
    if not r.ok:
        return ctx.failed(r, what)
    states, y = [y_T.double()], y_T.double()
    for step in range(LOOP_T, 0, -1):
        y = stub_p_sample_value(y, torch.full((LOOP_SHAPE[0],), step))
        states.append(y)
    ok, lines = compare(r.arrays.get("final"), states[-1], 0.0, what=what + ": the result")
    if ok:
        ok, lines = compare(r.arrays.get("chain"), torch.stack(states), 0.0,
                            what=what + ": the chain (return_chain=True)")
    if not ok:
        return fail(lines, "return Y_0; with return_chain, torch.stack([Y_T, Y_{T-1}, ..., Y_0]): "
                           "(T + 1, B, C, H, W), each state the output of p_sample.")
    return Verdict.ok()


# ------------------------------------------------------------------ sample

@graded("sample")
def sample(ctx):
    b, c, s = 16, 1, 8
    r = ctx.probe("sample_isolated", cfg_of(4, 0.1, c, s, batch_size=b),
                  buffers(ctx, 4, 0.1), key="sample")
    what = f"sample({b}) (C={c}, H=W={s})"
    if not r.ok:
        return ctx.failed(r, what)
    if r.header.get("loop_calls") != 1 or "y_T" not in r.arrays:
        return fail([f"{what}: should call self.p_sample_loop once"])
    y_T = torch.as_tensor(r.arrays["y_T"]).double()
    if tuple(y_T.shape) != (b, c, s, s):
        return fail([f"{what}: Y_T has shape {tuple(y_T.shape)}, expected {(b, c, s, s)}"])
    if not bool(((y_T == 1) | (y_T == -1)).all()):
        return fail([f"{what}: Y_T has values other than -1 and +1"])
    frac = float((y_T > 0).double().mean())
    if abs(frac - 0.5) > z_quantile() * math.sqrt(0.25 / y_T.numel()):
        return fail([f"{what}: {100 * frac:.1f} % of Y_T is +1; fair coins give 50 %"],
                    "Y_T is +1 where a uniform is < 1/2.")
    ok, lines = compare(r.arrays.get("ret"), (y_T + 1) / 2, 0.0, what=what + ": the result")
    if not ok:
        return fail(lines, "map the result of p_sample_loop from {-1, +1} to {0, 1} "
                           "(to_unit_range).")
    return Verdict.ok()
