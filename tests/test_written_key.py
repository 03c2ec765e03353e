"""The written part's key, checked by code where an answer can be checked.

Each test names the question it checks (solutions/written/homework.tex) and first asserts that the
key still states the formula it tests (`assert_in_key`), so that editing a formula in the key
without re-checking it fails here.

Monte-Carlo checks compare an estimate with the key's value within Z = 5 standard errors. For a
correct formula one such check fails with probability 5.7e-7 (two-sided normal tail); this module
makes fewer than 200 of them, so a correct key would fail for a random seed with probability below
1.2e-4 (Bonferroni), and with the fixed seeds below it never does. Each check is also shown to
have power: the wrong variants students (and the source copies) write fall far outside the band.
"""

import itertools
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

KEY = Path(__file__).resolve().parent.parent / "solutions" / "written" / "homework.tex"
Z = 5.0  # standard errors allowed in a Monte-Carlo check


def assert_in_key(*snippets):
    """The key states each snippet (whitespace-insensitive)."""
    text = "".join(KEY.read_text().split())
    for snippet in snippets:
        assert "".join(snippet.split()) in text, f"the key no longer says {snippet!r}"


def assert_within(estimate, expected, se, what):
    estimate, expected, se = map(np.asarray, (estimate, expected, se))
    err = np.abs(estimate - expected)
    assert np.all(err <= Z * se), f"{what}: |{estimate} - {expected}| > {Z} x {se}"


def assert_rejected(estimate, wrong, se, what):
    """A wrong variant lies far outside the Monte-Carlo band (the check has power)."""
    err = np.max(np.abs(np.asarray(estimate) - np.asarray(wrong)) / np.asarray(se))
    assert err > 4 * Z, f"{what}: the check cannot tell the wrong variant apart ({err:.1f} SE)"


# ---------------------------------------------------------------- 1a, 1b: padding


def key_padding(kh, kw):
    """(p_t, p_b, p_l, p_r) as the key gives them (question 1a)."""
    return kh // 2, kh - 1 - kh // 2, kw // 2, kw - 1 - kw // 2


def conv_by_definition(x, theta, theta0):
    """Eq. (1) of the written part, phantom pixels read as 0; also returns the rows and columns
    it reads (1-based), to count the phantom ones."""
    C, nh, nw = x.shape
    _, kh, kw = theta.shape
    y = torch.full((nh, nw), float(theta0), dtype=x.dtype)
    rows, cols = set(), set()
    for h in range(1, nh + 1):
        for w in range(1, nw + 1):
            for i in range(1, kh + 1):
                for j in range(1, kw + 1):
                    m, n = h - kh // 2 + i - 1, w - kw // 2 + j - 1
                    rows.add(m)
                    cols.add(n)
                    if 1 <= m <= nh and 1 <= n <= nw:
                        y[h - 1, w - 1] += (theta[:, i - 1, j - 1] * x[:, m - 1, n - 1]).sum()
    return y, rows, cols


def conv_on_padded(xp, theta, theta0, nh, nw):
    """The key's 1b layer: y'_{h,w} = theta0 + sum theta_{c,i,j} x'_{c,h+i-1,w+j-1}."""
    _, kh, kw = theta.shape
    y = torch.full((nh, nw), float(theta0), dtype=xp.dtype)
    for h in range(1, nh + 1):
        for w in range(1, nw + 1):
            y[h - 1, w - 1] += (theta * xp[:, h - 1:h - 1 + kh, w - 1:w - 1 + kw]).sum()
    return y


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("kh, kw", [(1, 1), (3, 3), (5, 3), (4, 4), (2, 5), (6, 3), (4, 1)])
def test_padding_formulas_match_conv2d_for_odd_and_even_kernels(kh, kw):
    assert_in_key(r"p_t = \lfloor K_h/2\rfloor", r"p_b = K_h - 1 - \lfloor K_h/2\rfloor",
                  r"p_l = \lfloor K_w/2\rfloor", r"p_r = K_w - 1 - \lfloor K_w/2\rfloor",
                  r"x'_{c,\,h+i-1,\,w+j-1}")
    g = torch.Generator().manual_seed(kh * 10 + kw)
    C, nh, nw = 2, 5, 7
    x = torch.randn(C, nh, nw, generator=g, dtype=torch.float64)
    theta = torch.randn(C, kh, kw, generator=g, dtype=torch.float64)
    theta0 = 0.3
    p_t, p_b, p_l, p_r = key_padding(kh, kw)
    y, rows, cols = conv_by_definition(x, theta, theta0)
    # 1a: exactly p_t phantom rows above, p_b below, p_l columns left, p_r right.
    assert (min(rows), max(rows)) == (1 - p_t, nh + p_b)
    assert (min(cols), max(cols)) == (1 - p_l, nw + p_r)
    # The padded input through PyTorch's (unflipped) conv2d gives the same layer.
    xp = F.pad(x, (p_l, p_r, p_t, p_b))
    torch_y = F.conv2d(xp[None], theta[None], torch.tensor([theta0], dtype=x.dtype))[0, 0]
    torch.testing.assert_close(torch_y, y, rtol=0, atol=1e-12)
    # 1b: the rewritten layer reads only existing indices of x' and agrees.
    torch.testing.assert_close(conv_on_padded(xp, theta, theta0, nh, nw), y, rtol=0, atol=1e-12)
    # The key's remark: padding="same" is this layer for odd sizes; for even sizes it puts the
    # extra row/column at the bottom/right instead (the sides swapped).
    same = F.conv2d(x[None], theta[None], torch.tensor([theta0], dtype=x.dtype),
                    padding="same")[0, 0]
    swapped = F.conv2d(F.pad(x, (p_r, p_l, p_b, p_t))[None], theta[None],
                       torch.tensor([theta0], dtype=x.dtype))[0, 0]
    torch.testing.assert_close(same, swapped, rtol=0, atol=1e-12)
    if kh % 2 and kw % 2:
        torch.testing.assert_close(same, y, rtol=0, atol=1e-12)
    else:
        assert not torch.allclose(same, y)


def test_source_padding_answer_is_negative_for_every_kernel():
    # The source copy's p_r = floor(K/2) - (K - 1): a count can't be negative (README of seeds).
    assert all(k // 2 - (k - 1) < 0 for k in range(3, 9))
    assert all(min(key_padding(k, k)) >= 0 for k in range(1, 9))


# ---------------------------------------------------------------- 2b, 2c: the CRF


def _scores(n=3, v=4, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=torch.float64)
    W = torch.randn(v, d, generator=g, dtype=torch.float64)
    b = torch.randn(v, generator=g, dtype=torch.float64)
    return torch.exp(h @ W.T + b), h @ W.T + b  # s: (N, V) scores, and their logits


def test_crf_global_normalizer_matches_enumeration():
    assert_in_key(r"Z(w_{1:N}) = \sum_{t'_1=1}^{V}\cdots\sum_{t'_N=1}^{V}\ \prod_{n=1}^N s_{n,t'_n}",
                  r"Z=\prod_{n=1}^N\sum_{v=1}^V s_{n,v}")
    s, logits = _scores()
    n, v = s.shape
    seqs = list(itertools.product(range(v), repeat=n))
    unnorm = torch.stack([torch.prod(s[torch.arange(n), torch.tensor(t)]) for t in seqs])
    z_enum = unnorm.sum()
    torch.testing.assert_close(torch.prod(s.sum(dim=1)), z_enum, rtol=1e-12, atol=0)
    p = unnorm / z_enum
    torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=p.dtype), rtol=1e-12, atol=0)
    # With scores on single tags, global = product of per-word softmaxes (the key's remark).
    soft = torch.softmax(logits, dim=1)
    local = torch.stack([torch.prod(soft[torch.arange(n), torch.tensor(t)]) for t in seqs])
    torch.testing.assert_close(p, local, rtol=1e-12, atol=0)


def test_crf_with_transition_scores_forward_algorithm_matches_enumeration():
    # The key's extension: a transition score A[t_{n-1}, t_n]; Z by the forward algorithm.
    assert_in_key("forward algorithm computes in $O(NV^2)$")
    s, _ = _scores(n=4, v=3, seed=1)
    n, v = s.shape
    A = torch.exp(torch.randn(v, v, generator=torch.Generator().manual_seed(2),
                              dtype=torch.float64))
    z_enum = sum(torch.prod(s[torch.arange(n), torch.tensor(t)])
                 * math.prod(float(A[t[k - 1], t[k]]) for k in range(1, n))
                 for t in itertools.product(range(v), repeat=n))
    alpha = s[0]
    for k in range(1, n):
        alpha = (alpha @ A) * s[k]
    torch.testing.assert_close(alpha.sum(), torch.as_tensor(z_enum), rtol=1e-12, atol=0)


# ---------------------------------------------------------------- Gaussian chain helpers


def _schedule(T=6, seed=0):
    rng = np.random.default_rng(seed)
    alphas = rng.uniform(0.55, 0.97, size=T)
    return alphas, np.cumprod(alphas)


def _posterior(alphas, abar, t):
    """The key's q(x_{t-1} | x_t, x_0) for paper step t (1-based): (coef on x_t, coef on x_0,
    variance)."""
    a, ab, ab_prev = alphas[t - 1], abar[t - 1], (abar[t - 2] if t > 1 else 1.0)
    return (math.sqrt(a) * (1 - ab_prev) / (1 - ab), math.sqrt(ab_prev) * (1 - a) / (1 - ab),
            (1 - ab_prev) * (1 - a) / (1 - ab))


def _simulate_chain(alphas, x0, n, seed):
    """n independent runs of the forward chain from x0 (shape (d,)): array (T + 1, n, d)."""
    rng = np.random.default_rng(seed)
    xs = [np.broadcast_to(x0, (n, x0.size)).copy()]
    for a in alphas:
        xs.append(math.sqrt(a) * xs[-1] + math.sqrt(1 - a) * rng.standard_normal(xs[-1].shape))
    return np.stack(xs)


# ---------------------------------------------------------------- 6c, 6d, 7a: q(x_t | x_0)


def test_closed_form_of_q_xt_given_x0_matches_monte_carlo():
    assert_in_key(r"q(\bx_t\mid\bx_0)=\N\big(\bx_t;\sqrt{\ab_t}\,\bx_0,\ (1-\ab_t)\bI\big)",
                  r"q(\bx_T\mid\bx_0)=\N\big(\sqrt{\ab_T}\,\bx_0,\ (1-\ab_T)\bI\big)")
    alphas, abar = _schedule()
    x0 = np.array([1.0, -0.5, 0.25, 2.0])
    n = 200_000
    xs = _simulate_chain(alphas, x0, n, seed=1)
    wrong_var = 0.0  # "standard deviations add": the source copy's slip
    for t in range(1, len(alphas) + 1):
        xt = xs[t]
        var = 1 - abar[t - 1]
        assert_within(xt.mean(0), math.sqrt(abar[t - 1]) * x0, math.sqrt(var / n), f"mean t={t}")
        assert_within(xt.var(0, ddof=1), var, var * math.sqrt(2 / (n - 1)), f"variance t={t}")
        cov01 = np.mean((xt[:, 0] - xt[:, 0].mean()) * (xt[:, 1] - xt[:, 1].mean()))
        assert_within(cov01, 0.0, var / math.sqrt(n), f"isotropic t={t}")
        # Gaussian, not only the right two moments.
        z = (xt[:, 2] - math.sqrt(abar[t - 1]) * x0[2]) / math.sqrt(var)
        assert stats.kstest(z[:20_000], "norm").pvalue > 1e-6
        wrong_var = (math.sqrt(alphas[t - 1] * wrong_var) + math.sqrt(1 - alphas[t - 1])) ** 2
        if t >= 2:
            assert_rejected(xt.var(0, ddof=1), wrong_var, var * math.sqrt(2 / (n - 1)),
                            "std devs added")


def test_extreme_schedules_keep_or_destroy_the_image():
    # 7a: beta = 0 -> abar = 1 (x_T = x_0); beta = 1 -> abar = 0 (pure noise from step 1).
    assert np.prod(np.ones(5)) == 1.0 and np.prod(np.r_[0.0, np.ones(4)]) == 0.0
    assert_in_key(r"All $\beta_t=0$: $\ab_t=1$", r"All $\beta_t=1$: $\ab_t=0$ from $t=1$ on")


# ---------------------------------------------------------------- 6f: the posterior


def _log_normal(x, mean, var):
    return -0.5 * (np.log(2 * np.pi * var) + (x - mean) ** 2 / var)


def test_posterior_is_the_ratio_of_the_three_gaussians():
    assert_in_key(r"\tilde\beta_t=\frac{(1-\ab_{t-1})(1-\alpha_t)}{1-\ab_t}",
                  r"\tilde{\boldsymbol{\mu}}_t=\frac{\sqrt{\alpha_t}(1-\ab_{t-1})}{1-\ab_t}\bx_t"
                  r"+\frac{\sqrt{\ab_{t-1}}(1-\alpha_t)}{1-\ab_t}\bx_0")
    alphas, abar = _schedule()
    x0 = 0.7
    grid = np.linspace(-3, 3, 41)
    for t in range(2, len(alphas) + 1):
        c_t, c_0, var = _posterior(alphas, abar, t)
        for xt in (-1.3, 0.2, 2.1):
            ratio = (_log_normal(xt, math.sqrt(alphas[t - 1]) * grid, 1 - alphas[t - 1])
                     + _log_normal(grid, math.sqrt(abar[t - 2]) * x0, 1 - abar[t - 2])
                     - _log_normal(xt, math.sqrt(abar[t - 1]) * x0, 1 - abar[t - 1]))
            np.testing.assert_allclose(ratio, _log_normal(grid, c_t * xt + c_0 * x0, var),
                                       rtol=0, atol=1e-10)


def test_posterior_matches_monte_carlo_regression():
    alphas, abar = _schedule()
    x0 = np.array([1.0, -0.5, 0.25, 2.0])
    n = 200_000
    xs = _simulate_chain(alphas, x0, n, seed=2)
    for t in (2, 4, 6):
        c_t, c_0, var = _posterior(alphas, abar, t)
        prev, cur = xs[t - 1], xs[t]
        for d in range(x0.size):
            # Given x_0, E[x_{t-1} | x_t] is linear in x_t: least squares recovers it.
            slope, intercept = np.polyfit(cur[:, d], prev[:, d], 1)
            resid = prev[:, d] - (slope * cur[:, d] + intercept)
            se_slope = math.sqrt(var / (n * cur[:, d].var()))
            assert_within(slope, c_t, se_slope, f"posterior slope t={t}")
            se_int = math.sqrt(var / n * (1 + cur[:, d].mean() ** 2 / cur[:, d].var()))
            assert_within(intercept, c_0 * x0[d], se_int, f"posterior intercept t={t}")
            assert_within(resid.var(), var, var * math.sqrt(2 / n), f"posterior variance t={t}")
        # The source's typo (sqrt(abar_t) for sqrt(alpha_t) on x_t) is far off.
        wrong = math.sqrt(abar[t - 1]) * (1 - abar[t - 2]) / (1 - abar[t - 1])
        assert_rejected(slope, wrong, se_slope, "posterior slope with sqrt(abar_t)")


# ---------------------------------------------------------------- 5d, 6a, 6b, 7d: the ELBO


class GaussianChain:
    """A 1-D diffusion with T steps from a fixed x_0, and a linear-Gaussian reverse model
    p(x_{t-1} | x_t) = N(a_t x_t + c_t, s2_t), p(x_T) = N(0, 1). Every expectation under
    q(x_{1:T} | x_0) is computed exactly from the joint moments (no sampling)."""

    def __init__(self, T=5, x0=0.8, seed=0):
        rng = np.random.default_rng(seed)
        self.T, self.x0 = T, x0
        self.alphas = rng.uniform(0.4, 0.95, size=T)
        self.abar = np.r_[1.0, np.cumprod(self.alphas)]  # abar[t], t = 0..T
        self.a = rng.uniform(0.5, 1.5, size=T + 1)  # index t = 1..T
        self.c = rng.normal(0, 0.3, size=T + 1)
        self.s2 = rng.uniform(0.1, 0.8, size=T + 1)

    def mean(self, t):
        return math.sqrt(self.abar[t]) * self.x0

    def cov(self, s, t):
        s, t = min(s, t), max(s, t)
        return math.sqrt(self.abar[t] / self.abar[s]) * (1 - self.abar[s])

    def e_log_normal(self, y, x, coef, shift, var):
        """E_q[log N(x_y; coef * x_x + shift, var)] for chain indices y, x (x None: no x)."""
        if x is None:
            m2 = self.cov(y, y) + (self.mean(y) - shift) ** 2
        else:
            d_var = self.cov(y, y) - 2 * coef * self.cov(x, y) + coef ** 2 * self.cov(x, x)
            m2 = d_var + (self.mean(y) - coef * self.mean(x) - shift) ** 2
        return -0.5 * (math.log(2 * math.pi * var) + m2 / var)

    def e_log_p(self, t):  # E log p_theta(x_{t-1} | x_t)
        return self.e_log_normal(t - 1, t, self.a[t], self.c[t], self.s2[t])

    def e_log_q(self, t):  # E log q(x_t | x_{t-1})
        return self.e_log_normal(t, t - 1, math.sqrt(self.alphas[t - 1]), 0.0,
                                 1 - self.alphas[t - 1])

    def e_log_prior(self):
        return self.e_log_normal(self.T, None, 0.0, 0.0, 1.0)

    def elbo(self):
        """Eq. (7)/(4) directly: E_q[log p(x_{0:T}) - log q(x_{1:T} | x_0)]."""
        return (self.e_log_prior() + sum(self.e_log_p(t) for t in range(1, self.T + 1))
                - sum(self.e_log_q(t) for t in range(1, self.T + 1)))

    def log_evidence(self):
        """log p_theta(x_0), exact: the reverse chain is linear-Gaussian."""
        m, v = 0.0, 1.0
        for t in range(self.T, 0, -1):
            m, v = self.a[t] * m + self.c[t], self.a[t] ** 2 * v + self.s2[t]
        return _log_normal(self.x0, m, v)


def _kl_gauss(m1, v1, m2, v2):
    return 0.5 * (math.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1)


def test_elbo_surgery_of_6a_on_a_gaussian_chain():
    assert_in_key(r"C=\E_{q(\bx_{T-1},\bx_T\mid\bx_0)}\Big[\log\frac{p(\bx_T)}{q(\bx_T\mid\bx_{T-1})}\Big]")
    ch = GaussianChain()
    T = ch.T
    # L_t = E[log p(x_t | x_{t+1})] - E[log q(x_t | x_{t-1})], for t = 1..T-1.
    L = [ch.e_log_p(t + 1) - ch.e_log_q(t) for t in range(1, T)]
    C = ch.e_log_prior() - ch.e_log_q(T)
    assert math.isclose(ch.e_log_p(1) + sum(L) + C, ch.elbo(), rel_tol=1e-12, abs_tol=1e-12)
    # C has no theta: changing the reverse model leaves it alone, and the ELBO is a bound.
    assert ch.elbo() < ch.log_evidence()


def test_kl_form_of_the_elbo_5d_7d_on_a_gaussian_chain():
    """-L = E log p(x_0|x_1) - sum_{t>=2} E_{q(x_t|x_0)} KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))
    - KL(q(x_T|x_0) || p(x_T)), with the KLs computed from the key's posterior."""
    assert_in_key(r"\KL\big(q(\bx_T\mid\bx_0)\,\|\,p(\bx_T)\big)"
                  r"+\sum_{t=2}^T\KL\big(q(\bx_{t-1}\mid\bx_t,\bx_0)\,\|\,p_\theta(\bx_{t-1}\mid\bx_t)\big)")
    for seed in range(3):
        ch = GaussianChain(seed=seed)
        T, alphas, abar = ch.T, ch.alphas, ch.abar[1:]
        total = ch.e_log_p(1)
        total -= _kl_gauss(ch.mean(T), ch.cov(T, T), 0.0, 1.0)
        for t in range(2, T + 1):
            c_t, c_0, var = _posterior(alphas, abar, t)
            # E over x_t ~ N(m, v) of KL(N(c_t x_t + c_0 x_0, var) || N(a x_t + c, s2)).
            u, w = c_t - ch.a[t], c_0 * ch.x0 - ch.c[t]
            m, v = ch.mean(t), ch.cov(t, t)
            e_sq = u * u * (v + m * m) + 2 * u * w * m + w * w
            total -= 0.5 * (math.log(ch.s2[t] / var) + (var + e_sq) / ch.s2[t] - 1)
        assert math.isclose(total, ch.elbo(), rel_tol=1e-11, abs_tol=1e-11)


def test_L_t_is_largest_when_the_reverse_step_is_the_forward_posterior():
    # 6b: the best p(x_t | x_{t+1}) = N(a x_{t+1} + c, s2) is q(x_t | x_{t+1}, x_0).
    assert_in_key(r"$p_\theta(\bx_t\mid\bx_{t+1})=q(\bx_t\mid\bx_{t+1},\bx_0)$")
    ch = GaussianChain(T=5)
    for t in range(1, ch.T):
        # Maximum likelihood of x_t given x_{t+1} under q: least squares in closed form.
        a = ch.cov(t, t + 1) / ch.cov(t + 1, t + 1)
        c = ch.mean(t) - a * ch.mean(t + 1)
        s2 = ch.cov(t, t) - a * ch.cov(t, t + 1)
        c_t, c_0, var = _posterior(ch.alphas, ch.abar[1:], t + 1)
        np.testing.assert_allclose([a, c, s2], [c_t, c_0 * ch.x0, var], rtol=1e-12, atol=1e-14)
        best = ch.e_log_normal(t, t + 1, a, c, s2)
        for da, dc, ds in [(0.05, 0, 0), (0, 0.05, 0), (0, 0, 0.05), (-0.05, 0.02, -0.02)]:
            assert ch.e_log_normal(t, t + 1, a + da, c + dc, s2 + ds) < best


# ---------------------------------------------------------------- 7e, 7f: the loss rewrites


def test_loss_rewrites_in_x_t_and_in_eps_are_identities():
    assert_in_key(r"=\frac{1}{\sqrt{\alpha_t}}\Big(\bx_t-\frac{\beta_t}{\sqrt{1-\ab_t}}\,\beps\Big)",
                  r"\frac{\beta_t^2}{2\sigma_t^2\,\alpha_t\,(1-\ab_t)}")
    rng = np.random.default_rng(3)
    alphas, abar = _schedule(T=8, seed=3)
    for t in range(2, 9):
        a, ab = alphas[t - 1], abar[t - 1]
        beta = 1 - a
        x0, eps, eps_theta = rng.standard_normal((3, 16))
        xt = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps
        c_t, c_0, var = _posterior(alphas, abar, t)
        mu_tilde = c_t * xt + c_0 * x0
        np.testing.assert_allclose(mu_tilde, (xt - beta / math.sqrt(1 - ab) * eps) / math.sqrt(a),
                                   rtol=0, atol=1e-12)
        wrong = (xt - beta / math.sqrt(1 - ab) * eps) / math.sqrt(ab)  # the source's 1/sqrt(abar)
        assert np.max(np.abs(wrong - mu_tilde)) > 1e-3
        sigma2 = var
        mu_theta = (xt - beta / math.sqrt(1 - ab) * eps_theta) / math.sqrt(a)
        lhs = np.sum((mu_tilde - mu_theta) ** 2) / (2 * sigma2)
        rhs = beta ** 2 / (2 * sigma2 * a * (1 - ab)) * np.sum((eps - eps_theta) ** 2)
        assert math.isclose(lhs, rhs, rel_tol=1e-10)
        # With sigma_t^2 = beta tilde the weight simplifies as the key says.
        assert math.isclose(beta ** 2 / (2 * var * a * (1 - ab)),
                            beta / (2 * a * (1 - abar[t - 2])), rel_tol=1e-12)


# ---------------------------------------------------------------- 5f: E||eps - z_T||^2


def test_distance_to_independent_noise_and_kl_to_white_noise():
    assert_in_key(r"m(2-\ab_T)+\ab_T\|\bx\|^2",
                  r"\frac12\big(\ab_T\|\bx\|^2-m\,\ab_T-m\log(1-\ab_T)\big)")
    rng = np.random.default_rng(4)
    m, n = 16, 100_000
    x = rng.uniform(-1, 1, size=m)
    for ab in (0.3, 0.01, 0.0):
        zT = math.sqrt(ab) * x + math.sqrt(1 - ab) * rng.standard_normal((n, m))
        d2 = np.sum((rng.standard_normal((n, m)) - zT) ** 2, axis=1)
        assert_within(d2.mean(), m * (2 - ab) + ab * x @ x, d2.std() / math.sqrt(n),
                      f"E||eps - z_T||^2 at abar={ab}")
        if ab > 0:
            kl = sum(_kl_gauss(math.sqrt(ab) * xi, 1 - ab, 0.0, 1.0) for xi in x)
            key = 0.5 * (ab * x @ x - m * ab - m * math.log(1 - ab))
            assert math.isclose(kl, key, rel_tol=1e-12)


# ---------------------------------------------------------------- 8a, 8b, 8d, 8e: binary


def delta_t(delta, t):
    """The key's flip probability after t steps (8b)."""
    return 0.5 * (1 - (1 - 2 * delta) ** t)


def posterior_plus(delta, t, y):
    """The key's P(Y_{t-1}[j] = +1 | Y_t[j] = y, Y_0[j] = +1) (8d)."""
    rho = 0.5 * (1 + (1 - 2 * delta) ** (t - 1))
    if y == 1:
        return (1 - delta) * rho / ((1 - delta) * rho + delta * (1 - rho))
    return delta * rho / (delta * rho + (1 - delta) * (1 - rho))


def test_replacement_probability_tends_to_one():
    assert_in_key(r"probability $(1-2\delta)^T$")
    delta, n, T = 0.05, 200_000, 30
    rng = np.random.default_rng(5)
    replaced = np.zeros(n, dtype=bool)
    for t in range(1, T + 1):
        replaced |= rng.random(n) < 2 * delta
        p_never = (1 - 2 * delta) ** t
        assert_within(1 - replaced.mean(), p_never, math.sqrt(p_never * (1 - p_never) / n),
                      f"never replaced by step {t}")
    assert (1 - 2 * delta) ** 500 < 1e-20  # the limit


def test_binary_closed_form_and_posterior_match_simulation():
    assert_in_key(r"\delta_t=\tfrac12\big(1-(1-2\delta)^t\big)",
                  r"\rho_{t-1}=P(Y_{t-1}[j]=+1\mid Y_0[j]=+1)=\tfrac12\big(1+(1-2\delta)^{t-1}\big)")
    delta, n, T = 0.08, 400_000, 12
    rng = np.random.default_rng(6)
    y = np.ones((T + 1, n), dtype=np.int8)  # pixels with x[j] = +1, flipped step by step
    for t in range(1, T + 1):
        y[t] = np.where(rng.random(n) < delta, -y[t - 1], y[t - 1])
    for t in range(1, T + 1):
        p = delta_t(delta, t)
        se = math.sqrt(p * (1 - p) / n)
        flipped = np.mean(y[t] == -1)
        assert_within(flipped, p, se, f"flip probability at t={t}")
        if t >= 3:
            assert_rejected(flipped, min(t * delta, 1.0), se, "t * delta")
        for obs in (1, -1):
            sel = y[t] == obs
            est = np.mean(y[t - 1][sel] == 1)
            q = posterior_plus(delta, t, obs)
            assert_within(est, q, math.sqrt(max(q * (1 - q), 1e-12) / sel.sum()),
                          f"posterior t={t} y={obs}")
    # The one-shot sampler of the key (keep with prob (1-2d)^t, else a fair coin) has the
    # same flip probability as t sequential flips.
    t = 7
    keep = rng.random(n) < (1 - 2 * delta) ** t
    coin = np.where(rng.random(n) < 0.5, 1, -1)
    one_shot = np.where(keep, 1, coin)
    p = delta_t(delta, t)
    assert_within(np.mean(one_shot == -1), p, math.sqrt(p * (1 - p) / n), "one-shot sampler")


def test_binary_posterior_matches_exact_two_state_chain():
    for delta in (0.02, 0.1, 0.3):
        M = np.array([[1 - delta, delta], [delta, 1 - delta]])  # states (+1, -1)
        for t in range(1, 15):
            before = np.linalg.matrix_power(M, t - 1)[0]  # P(Y_{t-1} = . | Y_0 = +1)
            joint = before[:, None] * M  # P(Y_{t-1} = a, Y_t = b | Y_0 = +1)
            assert math.isclose(joint[:, 1].sum(), delta_t(delta, t), rel_tol=1e-12)
            for b, obs in ((0, 1), (1, -1)):
                exact = joint[0, b] / joint[:, b].sum()
                assert math.isclose(posterior_plus(delta, t, obs), exact, rel_tol=1e-12)
        # 8e: at t = 1 the target is deterministic (one-hot at x[j]).
        assert posterior_plus(delta, 1, 1) == 1.0 and posterior_plus(delta, 1, -1) == 1.0


def test_written_key_points_add_up():
    """Each question's rubric gives exactly its points, and the parts add up to the table."""
    import sys

    sys.path.insert(0, str(KEY.parents[2]))
    from release.tex import key_text
    from release.written import parse_questions

    questions = parse_questions(key_text(KEY.read_text()))
    assert len(questions) == 38
    for q in questions:
        assert q["rubric"], f"{q['id']} has no rubric"
        assert sum(p for p, _ in q["rubric"]) == q["points"], q["id"]
        assert q["source"], f"{q['id']} names no source"
    table = dict(re.findall(r"^(\d) [^&]*& (\d+)\\\\", KEY.read_text(), flags=re.M))
    for part, pts in table.items():
        got = sum(q["points"] for q in questions if q["id"].startswith(part))
        assert got == int(pts), f"part {part}: questions give {got}, the table says {pts}"
    total = re.search(r"Total & (\d+)", KEY.read_text()).group(1)
    assert sum(q["points"] for q in questions) == int(total)
