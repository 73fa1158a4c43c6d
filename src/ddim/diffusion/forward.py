"""The DDPM forward process (Ho et al. 2020), its inversions and uniform timestep draws: pure functions.

x_t = alpha_t x_0 + sigma_t eps with alpha_t = sqrt(a_t), sigma_t = sqrt(1 - a_t). The two conversions below
are the one place that solves it for x_0 or eps; samplers (with float alpha, sigma of one timestep) and the
parameterization (with per-row tensors) both call them.
"""

from __future__ import annotations

import torch

Scale = float | torch.Tensor  # a Python float (one timestep) or a tensor broadcasting against x


def gather(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """table[t] shaped to broadcast against `like` ([B] -> [B, 1, 1, 1]), in like's dtype and device."""
    values = table.to(t.device)[t].to(like.device, like.dtype)
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def q_sample(
    x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps, a draw from q(x_t | x_0)."""
    a_t = gather(alphas_cumprod, t, x0)
    return a_t.sqrt() * x0 + (1 - a_t).sqrt() * noise


def x0_from_eps(x_t: torch.Tensor, eps: torch.Tensor, alpha: Scale, sigma: Scale) -> torch.Tensor:
    """x0_hat = (x_t - sigma eps) / alpha: the clean image implied by a noise estimate."""
    return (x_t - sigma * eps) / alpha


def eps_from_x0(x_t: torch.Tensor, x0: torch.Tensor, alpha: Scale, sigma: Scale) -> torch.Tensor:
    """eps = (x_t - alpha x0) / sigma: the noise implied by a clean-image estimate."""
    return (x_t - alpha * x0) / sigma


def sample_t(
    batch_size: int, num_timesteps: int, device: torch.device | str = "cpu", generator=None
) -> torch.Tensor:
    """t ~ U{0, ..., T-1}, one per example."""
    return torch.randint(0, num_timesteps, (batch_size,), device=device, generator=generator)
