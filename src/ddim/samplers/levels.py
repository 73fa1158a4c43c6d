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

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from ddim.diffusion.forward import x0_from_eps
from ddim.diffusion.schedule import Schedule
from ddim.samplers.base import Callback, FinalStep, Sampler, SamplerError, Step, increasing_sequence

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


def solver_path(
    timesteps: torch.Tensor | Sequence[int], schedule: Schedule, final_step: str = "denoise"
) -> list[Level]:
    """Levels from the largest distinct timestep down to the end chosen by final_step (validated)."""
    if final_step not in FINAL_STEPS:
        raise SamplerError(f"Unknown final_step {final_step!r}; choose one of {FINAL_STEPS}.")
    table = schedule.alphas_cumprod.tolist()
    seq = sorted(set(increasing_sequence(timesteps, schedule)), reverse=True)
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


def multistep_order(order: int, k: int, n: int, lower_order_final: bool) -> int:
    """Order of step k of n: the history only allows k + 1 (warm-up); lower_order_final also lowers the
    last steps to the steps left (diffusers and the DPM-Solver reference do so for stability at few steps)."""
    p = min(order, k + 1)
    return min(p, n - k) if lower_order_final else p


def report(
    callback: Callback, k: int, s: Level, t: Level, x: torch.Tensor, x0_hat: torch.Tensor | None
) -> torch.Tensor:
    """Tell the callback about step k from level s to t (x0_hat None: the solver had no use for it); returns x."""
    if callback is not None:
        callback(Step(k, s.t, t.t, x, x0_hat))
    return x


def x0_estimate(x: torch.Tensor, eps: torch.Tensor, level: Level) -> torch.Tensor:
    """The data prediction at a level (ddim.diffusion.forward.x0_from_eps)."""
    return x0_from_eps(x, eps, level.alpha, level.sigma)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PathSampler(Sampler):
    """A sampler that walks solver_path: final_step = denoise (the last call maps x to its x0 estimate) or
    none (stop at the smallest timestep, one network call fewer)."""

    final_step: FinalStep = "denoise"

    def path(self, schedule: Schedule) -> list[Level]:
        return solver_path(self.sequence(schedule), schedule, self.final_step)

    def check_schedule(self, schedule: Schedule) -> PathSampler:
        self.path(schedule)
        super().check_schedule(schedule)
        return self

    def path_steps(self, schedule: Schedule) -> int:
        """Steps of the path: one per distinct timestep, one fewer with final_step=none."""
        return len(set(self.sequence(schedule))) - (self.final_step == "none")

    def nfe(self, schedule: Schedule) -> int:
        return self.path_steps(schedule)  # one call per step unless a solver says otherwise

    def extras(self) -> list[str]:
        lower_order_final = getattr(self, "lower_order_final", True)
        return ["nolof"] * (not lower_order_final) + ["nodenoise"] * (self.final_step != "denoise")
