"""The DDPM forward process (Ho et al. 2020) and uniform timestep draws: pure functions on tensors."""

from __future__ import annotations

import math

import torch

from ddim.diffusion.parameterization import gather


def q_sample(
    x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps, a draw from q(x_t | x_0)."""
    a_t = gather(alphas_cumprod, t, x0)
    return a_t.sqrt() * x0 + (1 - a_t).sqrt() * noise


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, a_t: float) -> torch.Tensor:
    """x0_hat = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), the denoised estimate implied by eps at one timestep."""
    return (x_t - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)


def sample_t(
    batch_size: int, num_timesteps: int, device: torch.device | str = "cpu", generator=None
) -> torch.Tensor:
    """t ~ U{0, ..., T-1}, one per example."""
    return torch.randint(0, num_timesteps, (batch_size,), device=device, generator=generator)
