"""The variational bound against closed forms: KL, the discretized decoder, and the whole bound for Gaussian
data with the exact noise predictor (samplers/oracle.py), computed here independently of ddim.diffusion.likelihood."""

import math

import numpy as np
import pytest
import torch

from ddim.diffusion.likelihood import (
    BoundTerms,
    bound_terms,
    discretized_gaussian_log_likelihood,
    exact_bound,
    is_discrete,
    kl_strata,
    mean_and_ci,
    monte_carlo_bound,
    monte_carlo_timesteps,
    normal_kl,
)
from ddim.diffusion.oracle import GaussianOracle
from ddim.diffusion.parameterization import ModelFn, ModelSpec, tables
from ddim.diffusion.schedule import Schedule

LEVELS = torch.arange(256, dtype=torch.float64) / 127.5 - 1


@pytest.mark.parametrize("mean, log_scale", [(0.0, -3.0), (0.3, -6.0), (-0.99, -1.0), (2.5, 0.5), (-7.0, 1.5),
                                             (1.0, -9.0), (0.0, 3.0), (0.5, -4.6)])  # fmt: skip
def test_decoder_probabilities_sum_to_one_and_match_erf(mean, log_scale):
    mean_t = torch.full_like(LEVELS, mean)
    logp = discretized_gaussian_log_likelihood(LEVELS, mean_t, torch.full_like(LEVELS, log_scale))
    assert abs(float(logp.exp().sum()) - 1) < 1e-12
    # each bin against the normal CDF written with math.erf (edges open)
    s = math.exp(log_scale)
    cdf = lambda x: 0.5 * (1 + math.erf((x - mean) / (s * math.sqrt(2))))  # noqa: E731
    ref = [cdf(-1 + 1 / 255)] + [cdf(v + 1 / 255) - cdf(v - 1 / 255) for v in LEVELS[1:-1].tolist()]
    ref.append(1 - cdf(1 - 1 / 255))
    ref = torch.tensor(ref, dtype=torch.float64)
    big = ref > 1e-12  # where erf's differences are themselves accurate
    assert torch.allclose(logp[big].exp(), ref[big], rtol=1e-9, atol=1e-15)
    assert torch.isfinite(logp).all()


def test_decoder_tails_stay_finite_and_accurate_in_float32():
    x = torch.tensor([0.0, 0.0, 1.0, -1.0])
    mean = torch.tensor([0.5, 0.0, -0.5, 0.9])
    log_scale = torch.tensor([-5.0, -20.0, -5.0, -4.0])  # 100 sigma away, a bin of ~1e6 sigma, ...
    logp = discretized_gaussian_log_likelihood(x, mean, log_scale)
    assert torch.isfinite(logp).all()
    ref64 = discretized_gaussian_log_likelihood(x.double(), mean.double(), log_scale.double())
    assert abs(float(logp[1])) < 1e-6 and torch.allclose(
        logp[[0, 2, 3]].double(), ref64[[0, 2, 3]], rtol=1e-4
    )
    assert logp[0] < -1000  # the bin 100 sigma out: log_ndtr's tail, not log(0)


def test_kl_equals_numerical_integration():
    g = torch.Generator().manual_seed(0)
    m1, m2 = (
        torch.randn(6, generator=g, dtype=torch.float64),
        torch.randn(6, generator=g, dtype=torch.float64),
    )
    lv1, lv2 = (
        torch.randn(6, generator=g, dtype=torch.float64),
        torch.randn(6, generator=g, dtype=torch.float64),
    )
    kl = normal_kl(m1, lv1, m2, lv2)
    for i in range(6):
        s1 = math.exp(0.5 * float(lv1[i]))
        x = np.linspace(float(m1[i]) - 12 * s1, float(m1[i]) + 12 * s1, 200001)

        def logpdf(x, m, lv):
            return -0.5 * (np.log(2 * np.pi) + lv + (x - m) ** 2 / np.exp(lv))

        lp, lq = logpdf(x, float(m1[i]), float(lv1[i])), logpdf(x, float(m2[i]), float(lv2[i]))
        direct = np.trapezoid(np.exp(lp) * (lp - lq), x)
        assert abs(float(kl[i]) - direct) < 1e-8 * max(1.0, direct)


# ----------------------------------------------------------------------------------------------------------
# The whole bound for Gaussian data with the exact eps, in closed form (written from the paper's equations)

MU, STD = 0.1, 0.3
SCHED = Schedule.from_config(num_timesteps=100, beta_start=1e-4, beta_end=0.1)


def _levels_law():
    """Probabilities of the 256 levels when N(MU, STD^2) is quantized (edge bins open)."""
    z = lambda x: 0.5 * (1 + math.erf((x - MU) / (STD * math.sqrt(2))))  # noqa: E731
    edges = [-math.inf] + [(-1 + (2 * k + 1) / 255) for k in range(255)] + [math.inf]
    p = [z(b) - z(a) for a, b in zip(edges[:-1], edges[1:], strict=True)]  # erf(+-inf) = +-1
    return torch.tensor(p, dtype=torch.float64)


def _closed_form_bound(log_var_fn):
    """E_{x0 ~ quantized data} of the bound (bits/dim), each term's expectation over x_t exact; the decoder's
    by Gauss-Hermite quadrature over the (Gaussian) decoder mean."""
    p = _levels_law()
    x0 = LEVELS
    a = SCHED.alphas_cumprod.tolist()
    betas = SCHED.betas.tolist()
    T = len(a)
    total = torch.zeros_like(x0)
    # prior
    aT = a[-1]
    total += 0.5 * (-1 - math.log(1 - aT) + (1 - aT) + aT * x0**2)
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    for t in range(T):
        a_t, a_prev, beta = a[t], (a[t - 1] if t else 1.0), betas[t]
        e1 = math.sqrt(1 - a_t) / (a_t * STD**2 + 1 - a_t)  # eps* = e1 (x_t - sqrt(a_t) MU)
        h1 = (1 - math.sqrt(1 - a_t) * e1) / math.sqrt(a_t)  # x0_hat = h1 x_t + h0
        h0 = math.sqrt(1 - a_t) * e1 * math.sqrt(a_t) * MU / math.sqrt(a_t)
        c0 = math.sqrt(a_prev) * beta / (1 - a_t)
        c1 = math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t)
        p1, p0 = c0 * h1 + c1, c0 * h0  # model mean = p1 x_t + p0
        log_var = log_var_fn(t)
        if t == 0:  # decoder: mean ~ N(p1 sqrt(a_0) x0 + p0, p1^2 (1 - a_0))
            m_mean = p1 * math.sqrt(a_t) * x0 + p0
            m_std = abs(p1) * math.sqrt(1 - a_t)
            s = math.exp(0.5 * log_var)
            nll = torch.zeros_like(x0)
            for node, w in zip(nodes, weights, strict=True):
                m = m_mean + m_std * float(node)
                lo = torch.where(x0 < -0.999, torch.full_like(x0, -math.inf), x0 - 1 / 255)
                hi = torch.where(x0 > 0.999, torch.full_like(x0, math.inf), x0 + 1 / 255)
                mass = torch.special.ndtr((hi - m) / s) - torch.special.ndtr((lo - m) / s)
                nll -= float(w) / math.sqrt(2 * math.pi) * mass.clamp_min(1e-300).log()
            total += nll
        else:
            var_tilde = beta * (1 - a_prev) / (1 - a_t)
            d_mean = (c0 - (p1 - c1) * math.sqrt(a_t)) * x0 - p0  # E[mu_tilde - model mean | x0]
            d_var = (p1 - c1) ** 2 * (1 - a_t)
            total += 0.5 * (
                -1 + log_var - math.log(var_tilde) + (var_tilde + d_mean**2 + d_var) / math.exp(log_var)
            )
    seen = p > 1e-30  # levels the data never takes contribute nothing (and may hold inf * 0)
    return float((p * total)[seen].sum() / math.log(2)), float(-(p * p.log2())[seen].sum())


def _optimal_log_var(t):
    """The per-t variance that minimizes the expected KL for this mean: var_tilde + E[(mu_tilde - mean)^2]."""
    tab = tables(SCHED)
    if t == 0:
        return float(tab.posterior_log_variance_clipped[0])
    a_t, a_prev, beta = float(tab.alphas_cumprod[t]), float(tab.alphas_cumprod_prev[t]), float(tab.betas[t])
    e1 = math.sqrt(1 - a_t) / (a_t * STD**2 + 1 - a_t)
    h1 = (1 - math.sqrt(1 - a_t) * e1) / math.sqrt(a_t)
    c0, c1 = math.sqrt(a_prev) * beta / (1 - a_t), math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t)
    p1 = c0 * h1 + c1
    # mu_tilde - mean is linear in (x0 - MU, z), which are independent: exact second moment
    coef_x0 = c0 - (p1 - c1) * math.sqrt(a_t)
    err = coef_x0**2 * STD**2 + (p1 - c1) ** 2 * (1 - a_t)
    return math.log(float(tab.posterior_variance[t]) + err)


def _fixed(kind):
    tab = tables(SCHED)
    table = tab.posterior_log_variance_clipped if kind == "fixed_small" else tab.fixed_large_log_variance
    return lambda t: float(table[t])


def _code_bound(variance, n_images=32, side=32, seed=0, draws=None):
    """The bound by ddim.diffusion.likelihood on quantized Gaussian images with the oracle network (all T terms, or
    with draws=K the Monte-Carlo columns: t = 0 and one t per KL stratum)."""
    oracle = GaussianOracle(torch.full((1, side, side), MU), torch.full((1, side, side), STD), SCHED)
    g = torch.Generator().manual_seed(seed)
    x0 = ((oracle.sample_data(n_images, g).clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
    assert is_discrete(x0)
    if variance == "learned":
        log_vars = torch.tensor(
            [_optimal_log_var(t) for t in range(SCHED.num_timesteps)], dtype=torch.float64
        )

        def net(x, t):
            return torch.cat([oracle.eps(x, t), log_vars[t].reshape(-1, 1, 1, 1).expand_as(x)], dim=1)
    else:
        net = oracle.eps
    fn = ModelFn(net, ModelSpec("eps", variance), SCHED)
    T = SCHED.num_timesteps
    timesteps = torch.arange(T).repeat(n_images, 1)
    if draws is not None:
        tg = torch.Generator().manual_seed(seed + 77)
        timesteps = torch.stack([monte_carlo_timesteps(T, draws, tg) for _ in range(n_images)])
    gens = [torch.Generator().manual_seed(1000 + i) for i in range(n_images)]
    terms = bound_terms(fn.predict, x0, timesteps, SCHED, lambda i, k: torch.randn(x0.shape[1:], generator=gens[i],
                        dtype=torch.float64), max_batch=700)  # fmt: skip
    return terms


@pytest.mark.parametrize("variance", ["fixed_large", "fixed_small", "learned"])
def test_bound_of_the_exact_eps_equals_the_closed_form_and_exceeds_the_nll(variance):
    terms = _code_bound(variance)
    est = exact_bound(terms)
    mean, half = mean_and_ci(est.total)
    closed, entropy = _closed_form_bound(_optimal_log_var if variance == "learned" else _fixed(variance))
    assert abs(mean - closed) < 2 * half, (mean, half, closed)  # ~4 standard errors (seeded, deterministic)
    # narrow enough to see a wrong term (fixed_small's tiny early variances make its KL terms noisy)
    assert half < (0.2 if variance == "fixed_small" else 0.03)
    assert closed > entropy  # the bound is above the data's own NLL (its entropy, bits/dim)
    # Monte Carlo over timesteps estimates the same number (here from all T columns, so it is the same sum)
    mc = monte_carlo_bound(terms, SCHED.num_timesteps)
    assert torch.allclose(mc.total, est.total, rtol=1e-12)


def test_bound_approaches_the_nll_as_the_variance_improves():
    small, entropy = _closed_form_bound(_fixed("fixed_small"))
    large, _ = _closed_form_bound(_fixed("fixed_large"))
    best, _ = _closed_form_bound(_optimal_log_var)
    assert entropy < best < min(small, large)
    assert best - entropy < 0.5 * (min(small, large) - entropy)


def test_stratified_draws_are_uniform_in_their_strata_and_the_estimate_is_unbiased():
    """Terms known in advance (a fixed function of t): each drawn column is uniform over its stratum, the
    weights are the strata sizes, so the expectation is the exact sum; the estimate agrees within its CI."""
    T, K, n = 23, 4, 4000
    per_t = (torch.arange(T, dtype=torch.float64) * 0.37).sin() + 1.5
    bounds = kl_strata(T, K)
    sizes = bounds.diff()
    assert bounds.tolist() == [1, 2, 5, 11, 23]  # geometric strata of 1..T-1: small t get small strata
    g = torch.Generator().manual_seed(0)
    t = torch.stack([monte_carlo_timesteps(T, K, g) for _ in range(n)])
    assert (t[:, 0] == 0).all()
    for j in range(K):
        counts = torch.bincount(t[:, j + 1] - bounds[j])
        expected = n / float(sizes[j])
        assert counts.numel() == sizes[j] and ((counts - expected).abs() < 5 * expected**0.5).all()
    terms = BoundTerms(t, per_t[t], torch.zeros(n, K + 1), torch.full((n,), 0.5, dtype=torch.float64))
    est = monte_carlo_bound(terms, T)
    exact = 0.5 + float(per_t.sum())
    assert sum(float(sizes[j]) * float(per_t[bounds[j] : bounds[j + 1]].mean()) for j in range(K)) == (
        pytest.approx(exact - 0.5 - float(per_t[0]), rel=1e-12)
    )  # the weighting's expectation, by enumeration
    mean, half = mean_and_ci(est.total)
    assert abs(mean - exact) < half < 0.01 * exact
    assert (est.decoder == per_t[0]).all()  # L_0 enters every estimate exactly
    # K >= T - 1: one timestep per stratum, the exact sum
    assert monte_carlo_timesteps(T, 100, g).tolist() == list(range(T))
    with pytest.raises(ValueError, match="stratum"):  # uniform draws over 0..T-1 would be misweighted
        monte_carlo_bound(BoundTerms(t.flip(1), per_t[t], terms.mse, terms.prior), T)


def test_monte_carlo_bound_of_the_oracle_matches_the_closed_form_within_its_ci():
    terms = _code_bound("fixed_large", n_images=48, side=8, draws=8)
    est = monte_carlo_bound(terms, SCHED.num_timesteps)
    mean, half = mean_and_ci(est.total)
    closed, _ = _closed_form_bound(_fixed("fixed_large"))
    assert abs(mean - closed) < half, (mean, half, closed)
