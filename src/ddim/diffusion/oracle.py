"""Exact noise predictors for Gaussian (and 1-D Gaussian-mixture) data, to check samplers against closed forms.

With data x0 ~ N(mu, diag(s^2)) the marginal is x_t ~ N(sqrt(a_t) mu, a_t s^2 + 1 - a_t) and the optimal
predictor is eps*(x_t, t) = sqrt(1 - a_t) (x_t - sqrt(a_t) mu) / (a_t s^2 + 1 - a_t). Every unclipped sampler
step is then affine in x_t plus Gaussian noise, so the law of the output is Gaussian with a mean and variance
given by a scalar recursion per dimension. The recursion here is written from the paper's equations, apart
from the sampler code, so the two can check each other. Float64 throughout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ddim.diffusion.schedule import Schedule


def _as_list(timesteps: torch.Tensor | Sequence[int]) -> list[int]:
    return [int(t) for t in (timesteps.tolist() if isinstance(timesteps, torch.Tensor) else timesteps)]


def frechet_diag(m1: torch.Tensor, v1: torch.Tensor, m2: torch.Tensor, v2: torch.Tensor) -> float:
    """Frechet (2-Wasserstein squared) distance of two diagonal Gaussians: |m1 - m2|^2 + |sqrt v1 - sqrt v2|^2."""
    return float(((m1 - m2) ** 2).sum() + ((v1.sqrt() - v2.sqrt()) ** 2).sum())


class GaussianOracle:
    """Data x0 ~ N(mean, diag(std^2)) of any shape; `eps` is the exact noise predictor for a schedule."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, schedule: Schedule):
        self.mean = torch.as_tensor(mean, dtype=torch.float64)
        self.std = torch.as_tensor(std, dtype=torch.float64).expand_as(self.mean).clone()
        self.schedule = schedule
        self.a = schedule.alphas_cumprod.to(torch.float64)

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.a[t.cpu()].reshape(-1, *([1] * (x.ndim - 1))).to(x.device)
        mean, var = self.mean.to(x.device), self.std.to(x.device) ** 2
        out = (1 - a).sqrt() * (x.to(torch.float64) - a.sqrt() * mean) / (a * var + 1 - a)
        return out.to(x.dtype)

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn((n, *self.mean.shape), generator=generator, dtype=torch.float64)
        return self.mean + self.std * z

    def _a(self, t: int) -> float:
        return 1.0 if t < 0 else float(self.a[t])

    def _eps_affine(self, a: float) -> tuple[torch.Tensor, torch.Tensor]:
        """eps*(x, t) = e1 x + e0 at noise level a."""
        e1 = math.sqrt(1 - a) / (a * self.std**2 + 1 - a)
        return e1, -e1 * math.sqrt(a) * self.mean

    def output_law(
        self, timesteps: torch.Tensor | Sequence[int], eta: float = 0.0, variance: str = "eta"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact (mean, var) per dimension of the unclipped sampler's output, starting from x_T ~ N(0, I)."""
        seq = _as_list(timesteps)
        m = torch.zeros_like(self.mean)
        v = torch.ones_like(self.mean)
        for t, s in zip(reversed(seq), reversed([-1, *seq[:-1]]), strict=True):
            a_t, a_s = self._a(t), self._a(s)
            e1, e0 = self._eps_affine(a_t)
            # x0_hat = (x - sqrt(1 - a_t) eps) / sqrt(a_t) = h1 x + h0
            h1 = (1 - math.sqrt(1 - a_t) * e1) / math.sqrt(a_t)
            h0 = -math.sqrt(1 - a_t) * e0 / math.sqrt(a_t)
            if variance == "eta":
                var_noise = eta**2 * (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
                k = math.sqrt(max(1 - a_s - var_noise, 0.0))
                p, q = math.sqrt(a_s) * h1 + k * e1, math.sqrt(a_s) * h0 + k * e0
            elif variance == "sigma_hat":
                beta = 1 - a_t / a_s
                var_noise = beta if s >= 0 else 0.0
                c0, c1 = math.sqrt(a_s) * beta / (1 - a_t), math.sqrt(1 - beta) * (1 - a_s) / (1 - a_t)
                p, q = c0 * h1 + c1, c0 * h0
            else:
                raise ValueError(f"Unknown variance {variance!r}.")
            m, v = p * m + q, p**2 * v + var_noise
        return m, v

    def distance(
        self, timesteps: torch.Tensor | Sequence[int], eta: float = 0.0, variance: str = "eta"
    ) -> float:
        """Frechet distance between the exact output law and the data law."""
        m, v = self.output_law(timesteps, eta, variance)
        return frechet_diag(m, v, self.mean, self.std**2)

    def encode_decode_mse(self, timesteps: torch.Tensor | Sequence[int]) -> float:
        """Exact E|decode(encode(x0)) - x0|^2 per dimension for x0 from the data law (the Table 2 analogue).

        Encoding steps from s to t use eps at (x_s, s), and at tau_0 for the first step, as ddim.samplers.encode.
        """
        seq = _as_list(timesteps)
        p, q = torch.ones_like(self.mean), torch.zeros_like(self.mean)  # x = p x0 + q

        def step(p, q, a_src, a_dst, a_eval):
            e1, e0 = self._eps_affine(a_eval)
            h1, h0 = (
                (1 - math.sqrt(1 - a_src) * e1) / math.sqrt(a_src),
                -math.sqrt(1 - a_src) * e0 / math.sqrt(a_src),
            )
            g1 = math.sqrt(a_dst) * h1 + math.sqrt(1 - a_dst) * e1
            g0 = math.sqrt(a_dst) * h0 + math.sqrt(1 - a_dst) * e0
            return g1 * p, g1 * q + g0

        prev = [-1, *seq[:-1]]
        for s, t in zip(prev, seq, strict=True):
            p, q = step(p, q, self._a(s), self._a(t), self._a(s if s >= 0 else seq[0]))
        for t, s in zip(reversed(seq), reversed(prev), strict=True):
            p, q = step(p, q, self._a(t), self._a(s), self._a(t))
        d = p - 1
        mse = d**2 * (self.std**2 + self.mean**2) + 2 * d * q * self.mean + q**2
        return float(mse.mean())


class GaussianMixture1DOracle:
    """1-D data from sum_k w_k N(mu_k, s_k^2); eps is the posterior-weighted mix of the component predictors."""

    def __init__(
        self, weights: Sequence[float], means: Sequence[float], stds: Sequence[float], schedule: Schedule
    ):
        self.w = torch.tensor(weights, dtype=torch.float64)
        self.w = self.w / self.w.sum()
        self.mu = torch.tensor(means, dtype=torch.float64)
        self.s = torch.tensor(stds, dtype=torch.float64)
        self.a = schedule.alphas_cumprod.to(torch.float64)

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: (B, 1)."""
        a = self.a[t.cpu()].reshape(-1, 1).to(x.device)
        xd = x.to(torch.float64)
        var = a * self.s**2 + 1 - a  # (B, K)
        diff = xd - a.sqrt() * self.mu
        logr = self.w.log() - 0.5 * var.log() - diff**2 / (2 * var)
        r = torch.softmax(logr, dim=1)
        score = -(r * diff / var).sum(1, keepdim=True)
        return (-(1 - a).sqrt() * score).to(x.dtype)

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        k = torch.multinomial(self.w, n, replacement=True, generator=generator)
        z = torch.randn(n, generator=generator, dtype=torch.float64)
        return (self.mu[k] + self.s[k] * z).unsqueeze(1)

    def cdf(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.reshape(-1, 1).to(torch.float64) - self.mu) / self.s
        return (self.w * 0.5 * (1 + torch.erf(z / math.sqrt(2)))).sum(1)

    def ks_statistic(self, samples: torch.Tensor) -> float:
        """sup_x |F_n(x) - F(x)| of the samples against the exact mixture CDF."""
        x = samples.reshape(-1).to(torch.float64).sort().values
        n = x.numel()
        f = self.cdf(x)
        i = torch.arange(1, n + 1, dtype=torch.float64)
        return float(torch.maximum(i / n - f, f - (i - 1) / n).max())
