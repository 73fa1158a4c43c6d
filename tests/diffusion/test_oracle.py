"""Samplers against closed forms: Gaussian data (exact eps, exact Gaussian output law) and a 1-D mixture."""

from __future__ import annotations

import math

import pytest
import torch

from ddim.diffusion.oracle import GaussianMixture1DOracle, GaussianOracle, frechet_diag
from ddim.diffusion.schedule import Schedule, timestep_sequence
from ddim.samplers import reconstruct, sample

SCHED = Schedule.from_config("linear", 1000, 1e-4, 0.02)
# Sharp, image-like data: means inside [-1, 1], small spreads (what makes few-step sampling hard).
MEAN = torch.tensor([0.5, -0.3, 0.7, -0.6], dtype=torch.float64)
STD = torch.tensor([0.05, 0.1, 0.15, 0.4], dtype=torch.float64)
N = 10000


@pytest.fixture(scope="module")
def oracle() -> GaussianOracle:
    return GaussianOracle(MEAN, STD, SCHED)


def noise(n: int = N, d: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_oracle_eps_is_minus_sqrt_one_minus_a_times_the_score(oracle):
    mix = GaussianMixture1DOracle([0.3, 0.7], [-0.6, 0.5], [0.1, 0.2], SCHED)
    for t in (0, 10, 300, 999):
        a = float(SCHED.alphas_cumprod[t])
        x = noise(64).requires_grad_(True)
        marginal = torch.distributions.Normal(math.sqrt(a) * MEAN, (a * STD**2 + 1 - a).sqrt())
        (score,) = torch.autograd.grad(marginal.log_prob(x).sum(), x)
        tt = torch.full((64,), t)
        assert torch.allclose(oracle.eps(x.detach(), tt), -math.sqrt(1 - a) * score, atol=1e-12)

        y = noise(64, 1).requires_grad_(True)
        comps = torch.distributions.Normal(math.sqrt(a) * mix.mu, (a * mix.s**2 + 1 - a).sqrt())
        law = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(mix.w), comps)
        (score,) = torch.autograd.grad(law.log_prob(y.squeeze(1)).sum(), y)
        assert torch.allclose(mix.eps(y.detach(), tt), -math.sqrt(1 - a) * score, atol=1e-10)


def test_ddim_with_1000_steps_reproduces_the_data_mean_and_variance():
    # Broader spreads than MEAN/STD: with very sharp data even S = 1000 leaves a visible variance bias
    # (about -8% at std 0.05, which the exact recursion reproduces); here it is below 1.5%.
    mean = torch.tensor([0.5, -0.3, 0.7, -0.6], dtype=torch.float64)
    std = torch.tensor([0.2, 0.3, 0.4, 0.5], dtype=torch.float64)
    broad = GaussianOracle(mean, std, SCHED)

    def moments_match(steps: int) -> bool:
        x = sample(broad.eps, noise(), timestep_sequence(steps), SCHED, eta=0.0)
        mean_ok = ((x.mean(0) - mean).abs() < 5 * std / math.sqrt(N) + 2e-3).all()
        var_ok = ((x.var(0) / std**2 - 1).abs() < 5 * math.sqrt(2 / N) + 0.02).all()
        return bool(mean_ok and var_ok)

    assert moments_match(1000)
    assert not moments_match(50)  # 10-22% too little variance: the check can tell


@pytest.mark.parametrize(
    "eta,variance", [(0.0, "eta"), (0.5, "eta"), (1.0, "eta"), (1.0, "sigma_hat")], ids=str
)
def test_sampler_output_law_matches_the_exact_affine_recursion(oracle, eta, variance):
    seq = timestep_sequence(10)
    x = sample(oracle.eps, noise(), seq, SCHED, eta=eta, variance=variance, generator=torch.Generator())
    m, v = oracle.output_law(seq, eta, variance)
    assert ((x.mean(0) - m).abs() / (v / N).sqrt()).max() < 5
    assert (x.var(0) / v - 1).abs().max() < 5 * math.sqrt(2 / N)


def test_table1_ordering_under_the_oracle(oracle):
    table = {
        (eta, var): [oracle.distance(timestep_sequence(s), eta, var) for s in (10, 20, 50, 100, 1000)]
        for eta, var in [(0.0, "eta"), (0.2, "eta"), (0.5, "eta"), (1.0, "eta"), (1.0, "sigma_hat")]
    }
    at10 = [row[0] for row in table.values()]
    assert at10 == sorted(at10) and at10[0] < 0.8 * at10[3] and at10[-1] > 2 * at10[3]
    for row in table.values():
        assert row == sorted(row, reverse=True)  # more steps, closer to the data
    # As in Table 1, sigma_hat is the worst with few steps and the best with all 1000.
    assert table[(1.0, "sigma_hat")][-1] < min(row[-1] for key, row in table.items() if key[1] == "eta")

    # The same ordering from the samplers' own output at S = 10 (empirical moments, not the recursion).
    def empirical(eta, var):
        x = sample(oracle.eps, noise(), timestep_sequence(10), SCHED, eta, var, generator=torch.Generator())
        return frechet_diag(x.mean(0), x.var(0), MEAN, STD**2)

    assert empirical(0.0, "eta") < empirical(1.0, "eta") < empirical(1.0, "sigma_hat")


def test_encode_decode_error_falls_as_steps_grow(oracle):
    x0 = oracle.sample_data(500, torch.Generator().manual_seed(1))
    errors = []
    for steps in (10, 50, 200, 1000):
        seq = timestep_sequence(steps)
        err = float(((reconstruct(oracle.eps, x0, seq, SCHED) - x0) ** 2).mean())
        exact = oracle.encode_decode_mse(seq)
        assert err == pytest.approx(exact, rel=0.15)  # the sampler's encoder agrees with the closed form
        errors.append(err)
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-3 * errors[0]


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_mixture_of_two_gaussians_is_reproduced(eta):
    mix = GaussianMixture1DOracle([0.3, 0.7], [-0.6, 0.5], [0.1, 0.2], SCHED)
    n = 4000
    x_T = noise(n, 1)
    ks = mix.ks_statistic(
        sample(mix.eps, x_T, timestep_sequence(1000), SCHED, eta, generator=torch.Generator())
    )
    assert ks < 0.035  # ~ the 0.1% Kolmogorov-Smirnov critical value 1.95 / sqrt(n)
    few = mix.ks_statistic(
        sample(mix.eps, x_T, timestep_sequence(10), SCHED, eta, generator=torch.Generator())
    )
    assert few > 2 * ks  # 10 steps are visibly off, so the check has power
