"""Hidden graded tests of part 1, diffusion.py (staff only; never shipped to students).

Each test is `fn(ctx) -> Verdict`, registered under the id that rubric.toml (beside this file) gives
points and visibility to. Tests ask the sandbox for probes (student code runs there and only
returns tensors) and compute the verdict here, against the reference (solutions/diffusion.py)
built around the same deterministic ProbeModel. The probes are in probes.py beside this file.

Isolation, so that one bug costs points in one place: q_sample, p_loss, forward, p_sample,
p_sample_loop and sample run with the reference buffers injected into the student's object (a
failing __init__ is bypassed), forward runs with p_loss replaced by a recorder, p_sample_loop with
p_sample replaced by a known map, sample with p_sample_loop replaced by a recorder. Every normal
draw in the worker is answered with probe_noise(seed, k, shape), which the grader can recompute,
so any way of drawing noise (noise_like, torch.randn, randn_like, normal_) gets the same result.
Tolerances: autograder/checks.py (derivation in its docstring).
"""

import math

import torch

from autograder.checks import U32, Verdict, bound, buffer_tolerance, compare
from autograder.runtime.probekit import probe_noise

from .probes import CONTRACT_BUFFERS, STUB_P_LOSS_VALUE, probe_model_class, stub_p_sample_value

TESTS = {}
DEVICE_ERRORS = ("same device", "expected device", "two devices", "different device")
HINTS = {
    "alphas_cumprod": "abar_t is the cumulative product of the alphas (torch.cumprod).",
    "alphas_cumprod_prev": "abar_prev[i] = abar_i: shift right by one and put abar_0 = 1 first.",
    "posterior_variance": "eq. (3): (1 - abar_{t-1}) (1 - alpha_t) / (1 - abar_t); 0 at i = 0.",
    "posterior_mean_coef1": "eq. (3): sqrt(abar_{t-1}) (1 - alpha_t) / (1 - abar_t) multiplies x_0.",
    "posterior_mean_coef2": "eq. (3): sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) multiplies x_t.",
}


def reference_of(ctx, T, schedule="cosine", loss_type="l1", channels=1, image_size=4):
    """The reference Diffusion around a ProbeModel (float32, CPU), cached per submission."""
    key = ("diffusion", T, schedule, loss_type, channels, image_size)
    if key not in ctx.cache:
        ctx.cache[key] = ctx.reference.Diffusion(
            probe_model_class()(T), image_size=image_size, channels=channels, timesteps=T,
            schedule=schedule, loss_type=loss_type)
    return ctx.cache[key]


def buffer_arrays(ctx, T, schedule="cosine"):
    """The reference buffers, sent to probes that inject them into the student's object."""
    ref = reference_of(ctx, T, schedule)
    return {f"buf_{n}": getattr(ref, n) for n in CONTRACT_BUFFERS}


def graded(test_id):
    def register(fn):
        TESTS[test_id] = fn
        return fn
    return register


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def images(seed, b, c, s, scale=1.0):
    return (torch.rand(b, c, s, s, generator=_gen(seed)) * 2 - 1) * scale


def normal(seed, b, c, s):
    return torch.randn(b, c, s, s, generator=_gen(seed))


def mixed_t(T, b, seed):
    """(b,) int64 with the first (0) and last (T-1) steps, the rest drawn uniformly."""
    t = torch.randint(0, T, (b,), generator=_gen(seed))
    t[0], t[-1 if b > 1 else 0] = T - 1, 0
    if b > 2:
        t[1] = min(1, T - 1)
    return t


def col(buf, t, ndim=4):
    return buf[t].to(torch.float64).reshape(-1, *([1] * (ndim - 1)))


def fail(lines, hint=None):
    text = "\n".join(lines)
    return Verdict.fail(text + (f"\n  hint: {hint}" if hint else ""))


# ------------------------------------------------------------------ Diffusion.__init__

def _check_buffers(ctx, schedule):
    for T in (1, 2, 50, 1000):
        what = f"Diffusion.__init__ (T={T}, schedule={schedule!r})"
        r = ctx.probe("buffers", {"T": T, "schedule": schedule})
        if not r.ok:
            return ctx.failed(r, what)
        if r.header.get("missing"):
            return fail([f"{what}: no attribute(s) {', '.join(r.header['missing'])}"],
                        "register each with self.register_buffer(name, value.float()).")
        ref = reference_of(ctx, T, schedule)
        abar, prev = ref.alphas_cumprod.double(), ref.alphas_cumprod_prev.double()
        for name in CONTRACT_BUFFERS:
            expected = getattr(ref, name).double()
            ok, lines = compare(r.arrays[name], expected, buffer_tolerance(expected, abar, prev),
                                what=f"{what}: {name}")
            if not ok:
                return fail(lines, HINTS.get(name, "compute in float64 from `alphas`, then "
                                                   "store float32 (see the contract)."))
    return Verdict.ok()


@graded("init_cosine")
def init_cosine(ctx):
    return _check_buffers(ctx, "cosine")


@graded("init_linear")
def init_linear(ctx):
    return _check_buffers(ctx, "linear")


@graded("init_registered")
def init_registered(ctx):
    T = 50
    r = ctx.probe("buffers", {"T": T, "schedule": "cosine"})
    what = f"Diffusion.__init__ (T={T})"
    if not r.ok:
        return ctx.failed(r, what)
    if r.header.get("missing"):
        return fail([f"{what}: missing {', '.join(r.header['missing'])}"])
    if r.header.get("not_buffers"):
        return fail([f"{what}: {', '.join(r.header['not_buffers'])} are plain attributes, not "
                     "registered buffers, so .to(device) would not move them"],
                    "use self.register_buffer(name, tensor).")
    for name in CONTRACT_BUFFERS:
        if tuple(r.arrays[name].shape) != (T,):
            return fail([f"{what}: {name} has shape {tuple(r.arrays[name].shape)}, expected ({T},)"])
    return Verdict.ok()


# ------------------------------------------------------------------ q_sample

Q_CASES = [  # (T, schedule, B, C, S)
    (1000, "cosine", 6, 3, 4),
    (50, "linear", 5, 1, 4),
    (1, "cosine", 2, 1, 2),
    (2, "linear", 4, 3, 2),
]


def _q_inputs(T, b, c, s, seed):
    return images(seed, b, c, s), mixed_t(T, b, seed + 1), normal(seed + 2, b, c, s)


def _q_probe(ctx, T, schedule, b, c, s, seed, zero_noise=False):
    x_0, t, noise = _q_inputs(T, b, c, s, seed)
    if zero_noise:
        noise = torch.zeros_like(noise)
    arrays = dict(buffer_arrays(ctx, T, schedule), x_0=x_0, t=t, noise=noise)
    r = ctx.probe("q_sample", {"T": T, "schedule": schedule, "channels": c, "image_size": s},
                  arrays, key=f"q{seed}{zero_noise}")
    return r, x_0, t, noise


@graded("q_sample_values")
def q_sample_values(ctx):
    for k, (T, schedule, b, c, s) in enumerate(Q_CASES):
        r, x_0, t, noise = _q_probe(ctx, T, schedule, b, c, s, 100 + k)
        what = f"q_sample (T={T}, {schedule}, x_0 {tuple(x_0.shape)}, t={t.tolist()})"
        if not r.ok:
            return ctx.failed(r, what)
        ref = reference_of(ctx, T, schedule)
        c0, c1 = col(ref.sqrt_alphas_cumprod, t), col(ref.sqrt_one_minus_alphas_cumprod, t)
        expected = ref.q_sample(x_0, t, noise).double()
        ok, lines = compare(r.arrays["out"], expected, bound(c0 * x_0, c1 * noise), what=what)
        if not ok:
            return fail(lines, "x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise, with each "
                               "example's own t: extract(buffer, t, x_0.shape).")
    return Verdict.ok()


@graded("q_sample_uses_noise")
def q_sample_uses_noise(ctx):
    T, schedule, b, c, s = Q_CASES[0]
    r, x_0, t, noise = _q_probe(ctx, T, schedule, b, c, s, 100)
    r0, *_ = _q_probe(ctx, T, schedule, b, c, s, 100, zero_noise=True)
    what = f"q_sample (T={T}, t={t.tolist()})"
    for res in (r, r0):
        if not res.ok:
            return ctx.failed(res, what)
        if res.header.get("noise_draws"):
            return fail([f"{what}: drew {res.header['noise_draws']} noise tensor(s) of its own"],
                        "use the `noise` argument; do not call torch.randn / noise_like here.")
    ref = reference_of(ctx, T, schedule)
    c1 = col(ref.sqrt_one_minus_alphas_cumprod, t)
    got = torch.from_numpy(r.arrays["out"]).double() - torch.from_numpy(r0.arrays["out"]).double()
    ok, lines = compare(got, (c1 * noise.double()), bound(c1 * noise, 2 * x_0),
                        what=f"{what}: q_sample(x_0, t, noise) - q_sample(x_0, t, 0)")
    if not ok:
        return fail(lines, "the noise term is sqrt(1 - abar_t) * noise.")
    return Verdict.ok()


# ------------------------------------------------------------------ q_posterior

@graded("q_posterior_values")
def q_posterior_values(ctx):
    for k, (T, schedule, b, c, s) in enumerate([(50, "cosine", 5, 3, 4), (1000, "linear", 4, 1, 2)]):
        x_0, t = images(200 + k, b, c, s), mixed_t(T, b, 210 + k)
        x_t = normal(220 + k, b, c, s)
        r = ctx.probe("q_posterior", {"T": T, "schedule": schedule, "channels": c,
                                      "image_size": s}, {"x_0": x_0, "x_t": x_t, "t": t},
                      key=f"qp{k}")
        what = f"q_posterior (T={T}, {schedule}, t={t.tolist()})"
        if not r.ok:
            return ctx.failed(r, what)
        ref = reference_of(ctx, T, schedule)
        mean, var = ref.q_posterior(x_0, x_t, t)
        abar, prev = ref.alphas_cumprod.double(), ref.alphas_cumprod_prev.double()
        tol1 = buffer_tolerance(ref.posterior_mean_coef1.double(), abar, prev)[t]
        tol2 = buffer_tolerance(ref.posterior_mean_coef2.double(), abar, prev)[t]
        tolv = buffer_tolerance(ref.posterior_variance.double(), abar, prev)[t]
        c1, c2 = col(ref.posterior_mean_coef1, t), col(ref.posterior_mean_coef2, t)
        tol_mean = (bound(c1 * x_0, c2 * x_t) + tol1.reshape(-1, 1, 1, 1) * x_0.abs()
                    + tol2.reshape(-1, 1, 1, 1) * x_t.abs())
        for name, exp, tol in (("mean", mean, tol_mean),
                               ("variance", var, tolv.reshape(-1, 1, 1, 1))):
            ok, lines = compare(r.arrays.get(name), exp.double(), tol, what=f"{what}: {name}")
            if not ok:
                return fail(lines, "q_posterior is given; check the posterior buffers in "
                                   "__init__ (eq. 3).")
    return Verdict.ok()


# ------------------------------------------------------------------ p_loss

def _p_loss_case(ctx, loss_type):
    T, schedule, b, c, s = 50, "cosine", 4, 3, 4
    x_0, t, noise = images(300, b, c, s), mixed_t(T, b, 301), normal(302, b, c, s)
    arrays = dict(buffer_arrays(ctx, T, schedule), x_0=x_0, t=t, noise=noise)
    r = ctx.probe("p_loss", {"T": T, "schedule": schedule, "loss_type": loss_type,
                             "channels": c, "image_size": s}, arrays, key="pl")
    return r, T, schedule, x_0, t, noise


def _p_loss_check(ctx, loss_type):
    r, T, schedule, x_0, t, noise = _p_loss_case(ctx, loss_type)
    what = f"p_loss (loss_type={loss_type!r}, T={T}, t={t.tolist()})"
    if not r.ok:
        return ctx.failed(r, what)
    ref = reference_of(ctx, T, schedule, loss_type=loss_type, channels=3)
    expected = ref.p_loss(x_0, t, noise).detach().double()
    c0, c1 = col(ref.sqrt_alphas_cumprod, t), col(ref.sqrt_one_minus_alphas_cumprod, t)
    with torch.no_grad():
        eps = ref.model(ref.q_sample(x_0, t, noise), t)
    # x_t error, through the 0.8-Lipschitz model, then the loss (summation adds log2(N) u).
    e_eps = ref.model.lipschitz * bound(c0 * x_0, c1 * noise) + bound(eps, noise)
    slope = 1.0 if loss_type == "l1" else 2 * (eps - noise).abs() + e_eps
    tol = float((slope * e_eps).mean()) + bound(expected) * math.log2(eps.numel())
    got = r.arrays.get("loss")
    if got is not None and got.size != 1:
        return fail([f"{what}: returned shape {tuple(got.shape)}; the loss must be a scalar"],
                    "take the mean over all elements.")
    ok, lines = compare(got.reshape(()) if got is not None else None, expected, tol, what=what)
    if not ok:
        hint = ("F.l1_loss(predicted_noise, noise): mean absolute difference." if loss_type == "l1"
                else "F.mse_loss(predicted_noise, noise): mean squared difference.")
        return fail(lines, hint + " Use self.loss_type to choose.")
    return Verdict.ok()


@graded("p_loss_l1")
def p_loss_l1(ctx):
    return _p_loss_check(ctx, "l1")


@graded("p_loss_l2")
def p_loss_l2(ctx):
    return _p_loss_check(ctx, "l2")


@graded("p_loss_model_input")
def p_loss_model_input(ctx):
    r, T, schedule, x_0, t, noise = _p_loss_case(ctx, "l1")
    what = f"p_loss (T={T}, t={t.tolist()})"
    if not r.ok:
        return ctx.failed(r, what)
    if r.header.get("model_calls") != 1:
        return fail([f"{what}: called the model {r.header.get('model_calls')} times, expected once"])
    if r.arrays["model_t"].tolist() != t.tolist():
        return fail([f"{what}: the model got t={r.arrays['model_t'].tolist()}"],
                    "pass the given t to self.model unchanged.")
    ref = reference_of(ctx, T, schedule, channels=3)
    c0, c1 = col(ref.sqrt_alphas_cumprod, t), col(ref.sqrt_one_minus_alphas_cumprod, t)
    ok, lines = compare(r.arrays["model_x"], ref.q_sample(x_0, t, noise).double(),
                        bound(c0 * x_0, c1 * noise), what=f"{what}: the model's input x_t")
    if not ok:
        return fail(lines, "the model predicts the noise in x_t = q_sample(x_0, t, noise).")
    return Verdict.ok()


# ------------------------------------------------------------------ forward

def _chi2_critical(df, z=4.75):
    """Wilson-Hilferty: the chi-square quantile at upper-tail probability ~1e-6 (z = 4.75)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


@graded("forward_t_uniform")
def forward_t_uniform(ctx):
    T, b = 50, 4096
    x_0, noise = images(400, b, 1, 2), normal(401, b, 1, 2)
    r = ctx.probe("forward_isolated", {"T": T, "image_size": 2},
                  dict(buffer_arrays(ctx, T), x_0=x_0, noise=noise), key="fu")
    what = f"forward (T={T}, batch of {b})"
    if not r.ok:
        return ctx.failed(r, what)
    if r.header.get("p_loss_calls") != 1:
        return fail([f"{what}: called p_loss {r.header.get('p_loss_calls')} times, expected once"])
    t = r.arrays["p_loss_t"]
    if t.dtype.kind not in "iu":
        return fail([f"{what}: t has dtype {r.header.get('t_dtype')}; expected int64"],
                    "torch.randint(0, T, (B,), device=x_0.device) gives int64 indices.")
    if tuple(t.shape) != (b,):
        return fail([f"{what}: t has shape {tuple(t.shape)}, expected ({b},): one per example"])
    t = torch.from_numpy(t).to(torch.int64)
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi > T - 1:
        return fail([f"{what}: t ranges over {lo} .. {hi}; valid indices are 0 .. {T - 1}"],
                    "code index i in 0..T-1 is paper step t = i + 1: torch.randint(0, T, ...).")
    counts = torch.bincount(t, minlength=T).double()
    expected = b / T
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    crit = _chi2_critical(T - 1)
    if chi2 > crit or lo != 0 or hi != T - 1:
        return fail([f"{what}: t is not uniform over 0 .. {T - 1} (chi-square {chi2:.0f} > "
                     f"{crit:.0f}, the 1e-6 level; smallest {lo}, largest {hi})"],
                    "draw each example's t independently: torch.randint(0, T, (B,)).")
    return Verdict.ok()


@graded("forward_noise")
def forward_noise(ctx):
    T, b, c, s = 50, 8, 3, 4
    x_0, noise = images(410, b, c, s), normal(411, b, c, s)
    for given in (True, False):
        arrays = dict(buffer_arrays(ctx, T), x_0=x_0)
        if given:
            arrays["noise"] = noise
        r = ctx.probe("forward_isolated", {"T": T, "channels": c, "image_size": s}, arrays,
                      key=f"fn{given}", noise_seed=7)
        what = f"forward ({'noise given' if given else 'noise=None'}, x_0 {tuple(x_0.shape)})"
        if not r.ok:
            return ctx.failed(r, what)
        if r.header.get("p_loss_calls") != 1:
            return fail([f"{what}: called p_loss {r.header.get('p_loss_calls')} times"])
        ok, lines = compare(r.arrays["p_loss_x_0"], x_0.double(), 0.0, what=f"{what}: x_0")
        if not ok:
            return fail(lines, "pass x_0 to p_loss unchanged.")
        got = torch.from_numpy(r.arrays["p_loss_noise"]).double()
        if given:
            ok, lines = compare(got, noise.double(), 0.0, what=f"{what}: the noise passed on")
            if not ok:
                return fail(lines, "use the given noise when it is not None.")
        else:
            drawn = [probe_noise(7, k, x_0.shape).double() for k in range(4)]
            if tuple(got.shape) != tuple(x_0.shape) or not any(torch.equal(got, z) for z in drawn):
                return fail([f"{what}: p_loss did not get freshly drawn standard normal noise of "
                             f"shape {tuple(x_0.shape)} (got shape {tuple(got.shape)})"],
                            "draw it with self.noise_like(x_0.shape, x_0.device).")
        if float(r.arrays["ret"].reshape(-1)[0]) != STUB_P_LOSS_VALUE:
            return fail([f"{what}: did not return the value p_loss returned"])
    return Verdict.ok()


@graded("forward_returns_loss")
def forward_returns_loss(ctx):
    T, b, c, s = 50, 6, 1, 4
    x_0, noise = images(420, b, c, s), normal(421, b, c, s)
    for loss_type in ("l1", "l2"):
        r = ctx.probe("forward", {"T": T, "loss_type": loss_type, "channels": c, "image_size": s},
                      dict(buffer_arrays(ctx, T), x_0=x_0, noise=noise), key="fr")
        what = f"forward (loss_type={loss_type!r}, T={T}, x_0 {tuple(x_0.shape)})"
        if not r.ok:
            return ctx.failed(r, what)
        if r.header.get("model_calls") != 1 or "model_t" not in r.arrays:
            return fail([f"{what}: called the model {r.header.get('model_calls')} times"])
        t = torch.from_numpy(r.arrays["model_t"]).to(torch.int64)
        if t.shape != (b,) or int(t.min()) < 0 or int(t.max()) >= T:
            return fail([f"{what}: the model got t={t.tolist()}"])
        ref = reference_of(ctx, T, loss_type=loss_type)
        expected = ref.p_loss(x_0, t, noise).detach().double()
        # Same error budget as p_loss: bounded by K u (|loss| + mean|noise| + 1) per element.
        tol = bound(expected, noise.abs().mean(), 1.0) * math.log2(x_0.numel())
        ok, lines = compare(r.arrays["loss"].reshape(()), expected, tol, what=what)
        if not ok:
            return fail(lines, "return self.p_loss(x_0, t, noise).")
    return Verdict.ok()


def requires(ctx, test_id, what):
    """Shape and device checks count only for a function that computes the right values, so a
    submission returning zeros of the right shape on the right device earns nothing."""
    v = ctx.verdict(test_id)
    if v.passed:
        return None
    return Verdict.fail(f"{what}: not checked: this counts only once the function's values are "
                        f"right, and this failed first:\n{v.message}")


def _meta(ctx, method, what, **cfg):
    T = cfg.pop("T", 10)
    r = ctx.probe("meta", dict({"T": T, "method": method, "channels": 1, "image_size": 4}, **cfg),
                  buffer_arrays(ctx, T), key="meta")
    if r.ok:
        if r.header.get("device") != "meta":
            return fail([f"{what}: returned a tensor on {r.header.get('device')!r} for inputs and "
                         "a model on another device"],
                        "create tensors with device=x.device (or the model's device), and do not "
                        "call .cpu() or .to('cpu') on results.")
        return Verdict.ok()
    if r.not_implemented:
        return ctx.failed(r, what)
    message = r.error.lower()
    if r.status == "error" and any(k in message for k in DEVICE_ERRORS):
        return fail([f"{what}: a tensor was created on the CPU while the model, buffers and "
                     f"inputs were on another device:", f"  {r.error}"],
                    "pass device=x.device to torch.randint / torch.full / noise_like (a GPU "
                    "run would fail the same way).")
    if r.status == "error" and "meta" in message:
        # An operation the meta device cannot run (e.g. .item()): fine on a real device.
        return Verdict.ok("device placement could not be probed (operation unsupported on the "
                          "meta device); not counted against you")
    return ctx.failed(r, what)


@graded("forward_device")
def forward_device(ctx):
    gate = requires(ctx, "forward_returns_loss", "forward (everything on device 'meta')")
    if gate:
        return gate
    return _meta(ctx, "forward", "forward (everything on device 'meta')")


# ------------------------------------------------------------------ p_sample

def _p_sample_expected(ctx, T, schedule, x, t_index, seed, c):
    """Reference output and its derived float32 error bound (per element)."""
    ref = reference_of(ctx, T, schedule, channels=c)
    z = probe_noise(seed, 0, x.shape)
    ref.noise_like = lambda shape, device, z=z: z
    t = torch.full((x.shape[0],), t_index, dtype=torch.long)
    expected = ref.p_sample(x, t, t_index).double()
    with torch.no_grad():
        eps = ref.model(x, t).double()
    s0, s1 = col(ref.sqrt_alphas_cumprod, t), col(ref.sqrt_one_minus_alphas_cumprod, t)
    c1, c2 = col(ref.posterior_mean_coef1, t), col(ref.posterior_mean_coef2, t)
    var = col(ref.posterior_variance, t)
    xd = x.double()
    x0_raw = (xd - s1 * eps) / s0
    # x0_hat = (x - s1 eps) / s0: the numerator's rounding is amplified by 1/s0 (~2e4 near
    # t = T for T = 1000). Clamping is 1-Lipschitz, and exact where |x0_hat| exceeds 1 by more
    # than its error. Then the mean c1 x0_hat + c2 x and the noise term sqrt(var) z.
    e_x0 = bound(xd, s1 * eps) / s0 + bound(x0_raw)
    e_x0 = torch.where(x0_raw.abs() - e_x0 > 1, torch.zeros_like(e_x0), e_x0)
    x0c = x0_raw.clamp(-1, 1)
    tol = c1 * e_x0 + bound(c1 * x0c, c2 * xd)
    if t_index > 0:
        tol = tol + bound(var.sqrt() * z.double(), var.sqrt() * z.double())
    return expected, tol


def _p_sample_cases(ctx, cases, what_fmt, hint):
    for k, (T, schedule, t_index, c, scale) in enumerate(cases):
        x = normal(500 + k, 3, c, 4) * scale
        seed = 60 + k
        r = ctx.probe("p_sample", {"T": T, "schedule": schedule, "t_index": t_index,
                                   "channels": c, "image_size": 4},
                      dict(buffer_arrays(ctx, T, schedule), x=x), key=f"ps{k}{scale}",
                      noise_seed=seed)
        what = what_fmt.format(T=T, schedule=schedule, t_index=t_index)
        if not r.ok:
            return ctx.failed(r, what)
        if r.header.get("model_calls") != 1:
            return fail([f"{what}: called the model {r.header.get('model_calls')} times, "
                         "expected once"])
        expected, tol = _p_sample_expected(ctx, T, schedule, x, t_index, seed, c)
        ok, lines = compare(r.arrays["out"], expected, tol, what=what)
        if not ok:
            return fail(lines, hint)
    return Verdict.ok()


@graded("p_sample_last_step")
def p_sample_last_step(ctx):
    cases = [(50, "cosine", 0, 3, 1.0), (1000, "cosine", 0, 1, 1.0), (1, "linear", 0, 1, 1.0),
             (2, "linear", 0, 3, 1.0)]
    return _p_sample_cases(ctx, cases, "p_sample (t_index=0, T={T}, {schedule})",
                           "at t_index=0 no noise is added: return the posterior mean, computed "
                           "from x0_hat clamped to [-1, 1].")


@graded("p_sample_noise")
def p_sample_noise(ctx):
    cases = [(50, "cosine", 1, 3, 1.0), (50, "cosine", 25, 1, 1.0), (50, "linear", 49, 3, 1.0),
             (1000, "linear", 500, 1, 1.0)]
    return _p_sample_cases(ctx, cases, "p_sample (t_index={t_index}, T={T}, {schedule})",
                           "x_{t-1} = mean + sqrt(posterior variance) * z, z from "
                           "self.noise_like(x.shape, x.device), with mean and variance from "
                           "q_posterior(x0_hat, x, t).")


@graded("p_sample_clamp")
def p_sample_clamp(ctx):
    cases = [(1000, "cosine", 999, 3, 1.0), (1000, "cosine", 990, 1, 1.0),
             (1000, "cosine", 900, 1, 1.0), (50, "cosine", 10, 1, 3.0)]
    return _p_sample_cases(ctx, cases, "p_sample (t_index={t_index}, T={T}, {schedule})",
                           "x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (eq. 4) must be "
                           "clamped to [-1, 1] before the posterior mean; near t = T it is huge.")


@graded("p_sample_device")
def p_sample_device(ctx):
    gate = requires(ctx, "p_sample_noise", "p_sample (everything on device 'meta')")
    if gate:
        return gate
    for t_index in (5, 0):
        v = _meta(ctx, "p_sample", f"p_sample (t_index={t_index}, everything on device 'meta')",
                  t_index=t_index)
        if not v.passed:
            return v
    return v


# ------------------------------------------------------------------ p_sample_loop

def _loop_isolated(ctx, T, b=3, c=1, s=4):
    img = normal(600 + T, b, c, s)
    r = ctx.probe("p_sample_loop_isolated", {"T": T, "channels": c, "image_size": s},
                  dict(buffer_arrays(ctx, T), img=img), key="li")
    states = [img]
    for i in reversed(range(T)):
        states.append(stub_p_sample_value(states[-1], i))
    stacked = ((torch.stack(states).double() + 1) / 2).clamp(0, 1)
    # Each stand-in step rounds twice (0.9 x, + c) in float32: 2 u (|x| + 0.05) per step.
    tol = torch.stack([4 * U32 * (k + 1) * (s.abs().double() + 0.05) for k, s in enumerate(states)])
    return r, img, stacked, tol


@graded("loop_order")
def loop_order(ctx):
    for T in (7, 1):
        r, img, _, _ = _loop_isolated(ctx, T)
        what = f"p_sample_loop (T={T}, p_sample replaced by a recorder)"
        if not r.ok:
            return ctx.failed(r, what)
        got = r.arrays["t_indices"].tolist()
        want = list(reversed(range(T)))
        if got != want:
            return fail([f"{what}: p_sample got t_index = {got}", f"  expected {want}"],
                        "loop i = T-1, ..., 0: for i in reversed(range(self.num_timesteps)).")
        if not r.header.get("t_filled"):
            return fail([f"{what}: t was not a (B,) tensor filled with t_index at every step"],
                        "t = torch.full((B,), i, dtype=torch.long, device=img.device).")
    return Verdict.ok()


@graded("loop_output")
def loop_output(ctx):
    T = 7
    r, img, stacked, tol = _loop_isolated(ctx, T)
    what = f"p_sample_loop (T={T}, img {tuple(img.shape)}, p_sample replaced by a known map)"
    if not r.ok:
        return ctx.failed(r, what)
    ok, lines = compare(r.arrays["final"], stacked[-1], tol[-1], what=what)
    if not ok:
        return fail(lines, "return unnormalize(final state): (x + 1) / 2 clamped to [0, 1].")
    return Verdict.ok()


@graded("loop_all_timesteps")
def loop_all_timesteps(ctx):
    T = 7
    r, img, stacked, tol = _loop_isolated(ctx, T)
    what = f"p_sample_loop (T={T}, return_all_timesteps=True)"
    if not r.ok:
        return ctx.failed(r, what)
    ok, lines = compare(r.arrays["all"], stacked, tol, what=what)
    if not ok:
        return fail(lines, "stack the start and the state after every step (T + 1 entries), "
                           "each mapped to [0, 1] with unnormalize.")
    return Verdict.ok()


@graded("loop_end_to_end")
def loop_end_to_end(ctx):
    for T in (1, 2, 10):
        img = normal(650 + T, 2, 1, 4)
        seed = 90 + T
        r = ctx.probe("p_sample_loop", {"T": T}, dict(buffer_arrays(ctx, T), img=img),
                      key="le", noise_seed=seed)
        what = f"p_sample_loop (T={T}, your p_sample)"
        if not r.ok:
            return ctx.failed(r, what)
        ref = reference_of(ctx, T)
        draws = iter(range(T + 1))
        ref.noise_like = lambda shape, device, d=draws, s=seed: probe_noise(s, next(d), shape)
        x = img
        err = torch.zeros_like(img, dtype=torch.float64)
        for i in reversed(range(T)):
            expected_step, tol_step = _p_sample_expected_state(ctx, ref, x, i)
            # Propagate: a step is Lipschitz in x with constant c2 + c1 (1 + s1 L_model) / s0.
            lip = float(ref.posterior_mean_coef2[i] + ref.posterior_mean_coef1[i]
                        * (1 + ref.sqrt_one_minus_alphas_cumprod[i] * ref.model.lipschitz)
                        / ref.sqrt_alphas_cumprod[i])
            err = lip * err.abs().max() + tol_step
            x = expected_step
        expected = ((x.double() + 1) / 2).clamp(0, 1)
        ok, lines = compare(r.arrays["final"], expected, err / 2 + U32, what=what)
        if not ok:
            return fail(lines, "check p_sample first (its own tests); the loop feeds each "
                               "output back as the next input.")
    return Verdict.ok()


def _p_sample_expected_state(ctx, ref, x, i):
    t = torch.full((x.shape[0],), i, dtype=torch.long)
    out = ref.p_sample(x, t, i)
    with torch.no_grad():
        eps = ref.model(x, t).double()
    s0, s1 = col(ref.sqrt_alphas_cumprod, t), col(ref.sqrt_one_minus_alphas_cumprod, t)
    c1, c2 = col(ref.posterior_mean_coef1, t), col(ref.posterior_mean_coef2, t)
    xd = x.double()
    x0_raw = (xd - s1 * eps) / s0
    tol = c1 * (bound(xd, s1 * eps) / s0 + bound(x0_raw)) + bound(c1 * x0_raw.clamp(-1, 1), c2 * xd)
    tol = tol + bound(out.double()) + bound(col(ref.posterior_variance, t).sqrt())
    return out, tol


@graded("loop_device")
def loop_device(ctx):
    gate = requires(ctx, "loop_output", "p_sample_loop (T=3, everything on device 'meta')")
    if gate:
        return gate
    return _meta(ctx, "p_sample_loop", "p_sample_loop (T=3, everything on device 'meta')", T=3)


# ------------------------------------------------------------------ sample

@graded("sample_start")
def sample_start(ctx):
    T, b, c, s = 5, 3, 3, 4
    r = ctx.probe("sample_isolated", {"T": T, "batch_size": b, "channels": c, "image_size": s},
                  buffer_arrays(ctx, T), key="si", noise_seed=11)
    what = f"sample (batch_size={b}, channels={c}, image_size={s}; p_sample_loop replaced)"
    if not r.ok:
        return ctx.failed(r, what)
    if r.header.get("loop_calls") != 1:
        return fail([f"{what}: called p_sample_loop {r.header.get('loop_calls')} times, "
                     "expected once"])
    got = torch.from_numpy(r.arrays["img"]).double()
    shape = (b, c, s, s)
    if tuple(got.shape) != shape:
        return fail([f"{what}: started from x_T of shape {tuple(got.shape)}, expected {shape}"],
                    "x_T has shape (batch_size, self.channels, self.image_size, self.image_size).")
    if not any(torch.equal(got, probe_noise(11, k, shape).double()) for k in range(3)):
        return fail([f"{what}: x_T is not freshly drawn standard normal noise"],
                    "x_T = self.noise_like(shape, device).")
    ok, lines = compare(r.arrays["ret"], got * 0.5, 0.0,
                        what=f"{what}: the returned images")
    if not ok:
        return fail(lines, "return p_sample_loop's result as it is.")
    return Verdict.ok()


@graded("sample_device")
def sample_device(ctx):
    gate = requires(ctx, "sample_start", "sample (model on device 'meta')")
    if gate:
        return gate
    return _meta(ctx, "sample", "sample (model on device 'meta')", T=3)


# ------------------------------------------------------------------ training smoke test

TRAIN = {"T": 20, "steps": 30, "batch": 16, "lr": 5e-3}


def _training(ctx):
    # 16 fixed 8x8 images: bars and checkerboards in [-1, 1] (structure the U-Net can learn).
    yy, xx = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    pats = []
    for k in range(16):
        if k % 4 == 0:
            p = ((xx + k) % 4 < 2)
        elif k % 4 == 1:
            p = ((yy + k) % 4 < 2)
        elif k % 4 == 2:
            p = ((xx + yy + k) % 2 == 0)
        else:
            p = ((xx - 3.5) ** 2 + (yy - 3.5) ** 2 < 4 + k / 2)
        pats.append(p.float() * 2 - 1)
    data = torch.stack(pats)[:, None]
    cfg = dict(TRAIN, cuda=bool(ctx.cuda))
    return ctx.probe("training", cfg, {"data": data}, key="train", timeout_s=90)


@graded("training_loss")
def training_loss(ctx):
    r = _training(ctx)
    what = (f"training (Unet(dim=8, dim_mults=(1, 2), channels=1), T={TRAIN['T']}, "
            f"{TRAIN['steps']} Adam steps through forward)")
    if not r.ok:
        return ctx.failed(r, what)
    losses = torch.from_numpy(r.arrays["losses"]).double()
    if losses.numel() != TRAIN["steps"] or not torch.isfinite(losses).all():
        return fail([f"{what}: losses {losses.tolist()[:10]}... are not all finite"])
    first, last = float(losses[:8].mean()), float(losses[-8:].mean())
    # The reference goes from ~0.72 (first 8 steps) to ~0.45 (last 8): a ratio 0.59 .. 0.67 over
    # model seeds 0-3. Without learning the ratio is 1 +- ~0.1 (8-step means of L1 losses whose
    # spread across t is ~0.15), so 0.85 separates the two.
    if not last < 0.85 * first:
        return fail([f"{what}: the loss did not decrease (mean of the first 8 steps {first:.3f}, "
                     f"of the last 8 {last:.3f})"],
                    "forward must return a differentiable loss: the model's prediction compared "
                    "with the noise that was added (no .detach(), no torch.no_grad()).")
    return Verdict.ok(f"loss {first:.3f} -> {last:.3f} on {r.header.get('device')}")


@graded("training_sample")
def training_sample(ctx):
    what = "training: sample(4) from the trained U-Net"
    for gate_id in ("sample_start", "loop_output"):
        gate = requires(ctx, gate_id, what)
        if gate:
            return gate
    r = _training(ctx)
    if not r.ok:
        return ctx.failed(r, what)
    s = torch.from_numpy(r.arrays["samples"]).double()
    if tuple(s.shape) != (4, 1, 8, 8):
        return fail([f"{what}: shape {tuple(s.shape)}, expected (4, 1, 8, 8)"])
    if not torch.isfinite(s).all() or float(s.min()) < 0 or float(s.max()) > 1:
        return fail([f"{what}: values outside [0, 1] or not finite "
                     f"(min {float(s.min()):.3g}, max {float(s.max()):.3g})"],
                    "p_sample_loop maps its result to [0, 1] with unnormalize.")
    if r.header.get("sample_device") != r.header.get("device"):
        return fail([f"{what}: returned images on {r.header.get('sample_device')}, "
                     f"the model is on {r.header.get('device')}"])
    return Verdict.ok()
