"""The noise levels a fast solver walks through, taken from the discrete DDPM table (one convention for all).

Convention: the network is only ever called at integer timesteps of the table, and alpha = sqrt(a_t),
sigma = sqrt(1 - a_t), lambda = log(alpha / sigma) are read from the float64 table at those integers (what
diffusers' schedulers do with integer timesteps). The DPM-Solver reference code instead interpolates
log alpha piecewise-linearly in a continuous time and feeds fractional times to the network; on the integer
grid the two coincide, and schedules defined on noise levels (log-SNR, Karras) are rounded onto the grid in
`ddim.diffusion.schedule.timestep_sequence`, so the network input and the solver's coefficients always agree.

A path is the distinct timesteps, largest first, followed by where the chain ends:
  final_step="denoise": the clean end a = 1 (sigma = 0, lambda = +inf). The last network call, at tau_0,
      maps x straight to its x0 estimate, a first-order step and the only finite one to lambda = inf
      (DDIM's a_{-1} = 1; diffusers' final_sigmas_type="zero"). Costs one network call.
  final_step="none": tau_0 itself; x_{tau_0} is returned as it is (keeping its noise sigma(tau_0)), one
      network call fewer (diffusers' final_sigmas_type="sigma_min" when tau_0 = 0; the DPM-Solver
      reference without denoise_to_zero).
Repeated timesteps (the quadratic rule at large S) are zero-length steps: a solver visits each once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from ddim.diffusion.schedule import Schedule
from ddim.samplers.ddim import SamplerError, _sequence

FINAL_STEPS = ("denoise", "none")


class Level(NamedTuple):
    """t: the timestep the network sees (-1 at the clean end); alpha, sigma: sqrt(a), sqrt(1 - a);
    lam: log(alpha / sigma), +inf at the clean end."""

    t: int
    alpha: float
    sigma: float
    lam: float

    @property
    def ve_sigma(self) -> float:
        """sigma / alpha: the noise level of the variance-exploding variable x / alpha (Karras et al.)."""
        return self.sigma / self.alpha


CLEAN = Level(-1, 1.0, 0.0, math.inf)


def check_final_step(final_step: str) -> str:
    if final_step not in FINAL_STEPS:
        raise SamplerError(
            f"Unknown sampler.final_step {final_step!r}; choose 'denoise' (the last call maps x to its x0 "
            "estimate) or 'none' (stop at the smallest timestep, one network call fewer)."
        )
    return final_step


def solver_path(
    timesteps: torch.Tensor | Sequence[int], schedule: Schedule, final_step: str = "denoise"
) -> list[Level]:
    """Levels from the largest distinct timestep down to the end chosen by final_step (validated)."""
    check_final_step(final_step)
    table = schedule.alphas_cumprod.tolist()
    seq = sorted(set(_sequence(timesteps, schedule)), reverse=True)
    path = [Level(t, math.sqrt(table[t]), math.sqrt(1.0 - table[t]), lam(table[t])) for t in seq]
    if final_step == "denoise":
        return [*path, CLEAN]
    if len(path) < 2:
        raise SamplerError(
            "sampler.final_step=none needs at least two distinct timesteps (it stops at the smallest "
            "without calling the network there); use more steps or final_step=denoise."
        )
    return path


def lam(a: float) -> float:
    """Half the log-SNR of a_t: log(sqrt(a) / sqrt(1 - a))."""
    return 0.5 * (math.log(a) - math.log1p(-a))


def num_steps(timesteps: torch.Tensor | Sequence[int], schedule_or_T: Schedule | int, final_step: str) -> int:
    """Steps of a solver path without building it (only the count of distinct timesteps matters)."""
    distinct = len(
        set(int(t) for t in (timesteps.tolist() if isinstance(timesteps, torch.Tensor) else timesteps))
    )
    return distinct - (final_step == "none")


def multistep_order(order: int, k: int, n: int, lower_order_final: bool) -> int:
    """Order of step k of n: the history only allows k + 1 (warm-up); lower_order_final also lowers the
    last steps to the steps left (diffusers and the DPM-Solver reference do so for stability at few steps)."""
    p = min(order, k + 1)
    return min(p, n - k) if lower_order_final else p


def t_batch(t: int, x: torch.Tensor) -> torch.Tensor:
    # A fresh tensor per call: eps_fn may keep a reference to it.
    return torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)


def x0_estimate(x: torch.Tensor, eps: torch.Tensor, level: Level) -> torch.Tensor:
    """(x - sigma eps) / alpha: the data prediction at a level."""
    return torch.add(x, eps, alpha=-level.sigma).mul_(1.0 / level.alpha)
