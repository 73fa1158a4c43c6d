"""The variational bound of DDPM (Ho et al. 2020, eq. 5) in bits/dim: KL terms, discretized decoder, prior.

    L = L_T + sum_{t=2..T} L_{t-1} + L_0,   L_T = KL(q(x_T | x_0) || N(0, I)),
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)),   L_0 = -log p(x_0 | x_1) (discretized decoder)

Index convention: the code's timestep t = 0..T-1 is the paper's t = 1..T, so `vb_terms` at t = 0 is L_0
(the decoder) and at t >= 1 it is the paper's L_{t} KL term, as in both reference implementations. Each
term is the mean over dimensions divided by ln 2 (bits/dim); the total is their plain sum.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from ddim.diffusion.forward import gather
from ddim.diffusion.parameterization import Prediction, posterior_log_variance, posterior_mean, tables
from ddim.diffusion.schedule import Schedule

LN2 = math.log(2.0)
BIN_HALF_WIDTH = 1.0 / 255.0  # 256 levels on [-1, 1]: bins of width 2/255 centred on the levels
EDGE = 1.0 - BIN_HALF_WIDTH / 2  # x below -EDGE is the lowest level, above EDGE the highest


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over all but the batch dimension."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def _log_mass(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """log(Phi(hi) - Phi(lo)) for standardized bounds lo < hi, without cancellation in either tail.

    Above zero the upper tail is used (Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi)); log(-expm1(d)) keeps the
    mass accurate when it is a tiny fraction of the larger CDF value.
    """
    flip = lo > 0
    a = torch.where(flip, -hi, lo)
    b = torch.where(flip, -lo, hi)
    log_b, log_a = torch.special.log_ndtr(b), torch.special.log_ndtr(a)
    # The clamp keeps a bin whose mass underflows finite (about -87 nats in float32, -708 in float64).
    tiny = torch.finfo(log_b.dtype).tiny
    return log_b + torch.log(-torch.expm1((log_a - log_b).clamp(max=-tiny)))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """log p(x) per element for x on the 256 levels of [-1, 1]: the N(mean, e^{2 log_scale}) mass of the bin
    [x - 1/255, x + 1/255], with the lowest bin open to -inf and the highest to +inf (DDPM's decoder).

    Exact normal CDF (the reference codes use a tanh approximation, which differs by ~1e-3 relative).
    """
    inv = torch.exp(-log_scale)
    lo = (x - mean - BIN_HALF_WIDTH) * inv
    hi = (x - mean + BIN_HALF_WIDTH) * inv
    interior = _log_mass(lo, hi)
    log_cdf_hi = torch.special.log_ndtr(hi)  # lowest bin: (-inf, x + 1/255]
    log_sf_lo = torch.special.log_ndtr(-lo)  # highest bin: [x - 1/255, +inf)
    return torch.where(x < -EDGE, log_cdf_hi, torch.where(x > EDGE, log_sf_lo, interior))


def is_discrete(x: torch.Tensor, tol: float = 1e-3) -> bool:
    """True when every value lies on the 256 levels of [-1, 1] (what the decoder's likelihood assumes)."""
    levels = (x.detach().double() + 1.0) * 127.5
    return bool(
        ((levels - levels.round()).abs() <= tol).all()
        and (levels.min() >= -tol)
        and (levels.max() <= 255 + tol)
    )


def prior_bpd(x0: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) in bits/dim, per image (no network involved)."""
    tab = tables(schedule)
    a_T = tab.alphas_cumprod[-1].item()
    mean = math.sqrt(a_T) * x0
    logvar = torch.full_like(x0, math.log1p(-a_T))
    return mean_flat(normal_kl(mean, logvar, torch.zeros_like(x0), torch.zeros_like(x0))) / LN2


def vb_terms_bpd(
    pred: Prediction,
    log_variance: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    schedule: Schedule,
) -> torch.Tensor:
    """One bound term per row, in bits/dim: the decoder NLL -log p(x_0 | x_1) where t = 0, else the KL of the
    posterior q(x_{t-1} | x_t, x_0) from the model's p(x_{t-1} | x_t) = N(pred.mean, exp(log_variance))."""
    true_mean = posterior_mean(x0, x_t, t, schedule)
    true_logvar = posterior_log_variance(t, x_t, schedule)
    kl = mean_flat(normal_kl(true_mean, true_logvar, pred.mean, log_variance)) / LN2
    decoder = -mean_flat(discretized_gaussian_log_likelihood(x0, pred.mean, 0.5 * log_variance)) / LN2
    return torch.where(t == 0, decoder, kl)


# ----------------------------------------------------------------------------------------------------------
# The whole bound for a batch of images (exact: every t; Monte Carlo: K random t per image)

PredictFn = Callable[[torch.Tensor, torch.Tensor], tuple[Prediction, torch.Tensor]]


class BoundTerms(NamedTuple):
    """terms[i, k]: the bound term (bits/dim) of image i at timestep timesteps[i, k]; mse[i, k]: the mean
    squared error of x0_hat there (on [-1, 1]); prior[i]: L_T."""

    timesteps: torch.Tensor
    terms: torch.Tensor
    mse: torch.Tensor
    prior: torch.Tensor


def bound_terms(
    predict_fn: PredictFn,
    x0: torch.Tensor,
    timesteps: torch.Tensor,
    schedule: Schedule,
    noise_fn: Callable[[int, int], torch.Tensor],
    max_batch: int = 256,
) -> BoundTerms:
    """Bound terms of each image x0[i] at the timesteps in row i of `timesteps` ([N, K] int64).

    (image, timestep) pairs are flattened and sent to the network `max_batch` rows at a time, so a few images
    with many timesteps fill a GPU as well as many images. noise_fn(i, k) is the standard normal draw that
    makes x_t of image i at its k-th timestep (the caller seeds it, per image).
    """
    n, k = timesteps.shape
    flat_t = timesteps.reshape(-1)
    flat_img = torch.arange(n).repeat_interleave(k)
    terms = torch.empty(n * k, dtype=torch.float64)
    mse = torch.empty(n * k, dtype=torch.float64)
    a = tables(schedule).alphas_cumprod
    for start in range(0, n * k, max_batch):
        rows = range(start, min(start + max_batch, n * k))
        imgs = flat_img[rows.start : rows.stop]
        t = flat_t[rows.start : rows.stop].to(x0.device)
        x_start = x0[imgs.to(x0.device)]
        noise = torch.stack([noise_fn(int(flat_img[r]), r % k) for r in rows]).to(x0)
        a_t = gather(a, t, x_start)
        x_t = a_t.sqrt() * x_start + (1 - a_t).sqrt() * noise
        pred, log_var = predict_fn(x_t, t)
        terms[rows.start : rows.stop] = vb_terms_bpd(pred, log_var, x_start, x_t, t, schedule).double().cpu()
        mse[rows.start : rows.stop] = mean_flat((pred.x0 - x_start) ** 2).double().cpu()
    return BoundTerms(
        timesteps, terms.reshape(n, k), mse.reshape(n, k), prior_bpd(x0, schedule).double().cpu()
    )


class BoundEstimate(NamedTuple):
    """Per image: total bits/dim and its parts (for Monte Carlo, unbiased estimates of them)."""

    total: torch.Tensor
    prior: torch.Tensor
    kl: torch.Tensor
    decoder: torch.Tensor


def exact_bound(terms: BoundTerms) -> BoundEstimate:
    """The bound from all T terms of each image (row k = timestep k)."""
    kl = terms.terms[:, 1:].sum(1)
    decoder = terms.terms[:, 0]
    return BoundEstimate(terms.prior + kl + decoder, terms.prior, kl, decoder)


def kl_strata(num_timesteps: int, draws: int) -> torch.Tensor:
    """Boundaries 1 = b_0 < ... < b_K = T of K strata of the KL timesteps 1..T-1 (stratum j is [b_j, b_{j+1})),
    geometric: b_j ~ T^(j/K). The terms fall off steeply with t (most of the KL sum sits in the first few
    timesteps), so those get strata of their own and the wide late strata hold small, similar terms; equal
    strata leave the estimate heavy-tailed and its confidence interval too short. K is capped at T - 1,
    where every stratum is one timestep and the estimate is exact."""
    k = max(1, min(int(draws), num_timesteps - 1))
    bounds = [1]
    for j in range(1, k + 1):
        geometric = round(num_timesteps ** (j / k))
        bounds.append(min(max(geometric, bounds[-1] + 1), num_timesteps - (k - j)))
    return torch.tensor(bounds, dtype=torch.int64)


def monte_carlo_timesteps(num_timesteps: int, draws: int, generator: torch.Generator) -> torch.Tensor:
    """[0, t_1, ..., t_K]: the decoder's t = 0 (computed exactly, it is the largest single term) and one t
    drawn uniformly from each KL stratum of `kl_strata`."""
    bounds = kl_strata(num_timesteps, draws)
    sizes = (bounds[1:] - bounds[:-1]).double()
    u = torch.rand(sizes.numel(), generator=generator, dtype=torch.float64)
    drawn = bounds[:-1] + (u * sizes).floor().long().clamp(max=sizes.long() - 1)
    return torch.cat([drawn.new_zeros(1), drawn])


def monte_carlo_bound(terms: BoundTerms, num_timesteps: int) -> BoundEstimate:
    """Unbiased estimate of each image's bound from `monte_carlo_timesteps` columns: L_T and L_0 exact, the
    KL sum as sum_j |stratum j| * term(t_j) (E[|S_j| term(t_j)] = the sum of the terms of stratum j)."""
    t = terms.timesteps
    bounds = kl_strata(num_timesteps, t.shape[1] - 1)
    if t.shape[1] - 1 != bounds.numel() - 1 or not bool(
        (t[:, 0] == 0).all() and (t[:, 1:] >= bounds[:-1]).all() and (t[:, 1:] < bounds[1:]).all()
    ):
        raise ValueError(
            "monte_carlo_bound needs the columns of monte_carlo_timesteps: t = 0, then one t per KL stratum."
        )
    weights = (bounds[1:] - bounds[:-1]).to(terms.terms.dtype)
    kl = (terms.terms[:, 1:] * weights).sum(1)
    decoder = terms.terms[:, 0]
    return BoundEstimate(terms.prior + kl + decoder, terms.prior, kl, decoder)


def mean_and_ci(values: torch.Tensor | Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (t quantile * std / sqrt(n)): per-image
    values are independent, so their spread carries every source of randomness (images, drawn t, noise);
    the t quantile keeps the interval honest for a few dozen images."""
    from scipy.stats import t as student_t

    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    n = v.numel()
    if n < 2:
        return float(v.mean()), float("nan")
    quantile = float(student_t.ppf(0.5 + level / 2, n - 1))
    return float(v.mean()), float(quantile * v.std(unbiased=True) / math.sqrt(n))
