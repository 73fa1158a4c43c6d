"""The DDPM forward process and training loss (Ho et al. 2020): pure functions on tensors."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _gather(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """table[t] broadcast against `like`: the float64 table is indexed first, then cast to the model dtype."""
    values = table.to(t.device)[t].to(like.dtype)
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def q_sample(
    x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps, a draw from q(x_t | x_0)."""
    a_t = _gather(alphas_cumprod, t, x0)
    return a_t.sqrt() * x0 + (1 - a_t).sqrt() * noise


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, a_t: float) -> torch.Tensor:
    """x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), the denoised estimate implied by eps at one timestep."""
    return (x_t - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)


def sample_t(
    batch_size: int, num_timesteps: int, device: torch.device | str = "cpu", generator=None
) -> torch.Tensor:
    """t ~ U{0, ..., T-1}, one per example."""
    return torch.randint(0, num_timesteps, (batch_size,), device=device, generator=generator)


def l_simple(
    eps_fn: EpsFn,
    x0: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_simple = E || eps - eps_theta(x_t, t) ||^2, averaged over pixels and the batch."""
    if t is None:
        t = sample_t(x0.shape[0], alphas_cumprod.numel(), x0.device)
    if noise is None:
        noise = torch.randn_like(x0)
    x_t = q_sample(x0, t, noise, alphas_cumprod)
    return F.mse_loss(eps_fn(x_t, t).float(), noise.float())
