"""Euler, Euler-ancestral and Heun in the variables of Karras et al. 2022 (EDM, arXiv 2206.00364).

EDM writes the probability-flow ODE for the variance-exploding variable y = x / alpha with noise level
s = sigma / alpha as dy/ds = eps(x, t): the network's eps is the derivative. Euler on it is exactly DDIM
(eta = 0) and Euler-ancestral is DDIM with eta = 1 (k-diffusion's sample_euler_ancestral); they are here in
EDM's form so the Karras-family samplers share one convention, and the tests check both identities.
Heun (EDM Algorithm 1 with S_churn = 0) corrects each Euler step with a second call at the step's end,
except on the step to s = 0 where the derivative is undefined: 2 calls per step, 1 on the last.
Levels come from ddim.samplers.levels (integer timesteps; the network gets x = alpha y, as diffusers'
scale_model_input). Noise contract of ddim.samplers.sample: a draw only on steps with noise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import ClassVar

import torch

from ddim.diffusion.schedule import Schedule
from ddim.samplers.base import Callback, EpsFn, Generators, SkipType, as_generator_list, randn, t_batch
from ddim.samplers.levels import PathSampler, report, solver_path, x0_estimate
from ddim.settings import Count, NonNegative


@dataclasses.dataclass(frozen=True, kw_only=True)
class Euler(PathSampler):
    """Euler on the probability-flow ODE in the EDM variables (the same update as DDIM with eta = 0)."""

    name: ClassVar[str] = "euler"
    steps: Count = 10
    skip_type: SkipType = "quadratic"  # DDIM's update: DDIM's best spacing at 5-10 NFE (docs/sampling.md)

    def run(self, model, x_T, schedule, generator=None, callback=None) -> torch.Tensor:
        return euler(model, x_T, self.sequence(schedule), schedule, self.final_step, callback=callback)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EulerAncestral(PathSampler):
    """Euler-ancestral (k-diffusion): Euler to sigma_down plus fresh noise; eta scales the noise (1 = DDPM)."""

    name: ClassVar[str] = "euler_ancestral"
    steps: Count = 20
    skip_type: SkipType = "logsnr"
    eta: NonNegative = 1.0

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return self.eta > 0

    def extras(self) -> list[str]:
        return [f"eta{float(self.eta):g}"] * (self.eta != 1.0) + super().extras()

    def run(self, model, x_T, schedule, generator=None, callback=None) -> torch.Tensor:
        return euler_ancestral(
            model,
            x_T,
            self.sequence(schedule),
            schedule,
            self.final_step,
            generator,
            float(self.eta),
            callback,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Heun(PathSampler):
    """Heun's second-order method (EDM's deterministic sampler): 2 calls per step, 1 on the step to x0."""

    name: ClassVar[str] = "heun"
    steps: Count = 10
    skip_type: SkipType = "trailing"  # the best spacing at 5-9 NFE on a trained model (docs/sampling.md)

    def nfe(self, schedule: Schedule) -> int:
        return 2 * self.path_steps(schedule) - (self.final_step == "denoise")

    def run(self, model, x_T, schedule, generator=None, callback=None) -> torch.Tensor:
        return heun(model, x_T, self.sequence(schedule), schedule, self.final_step, callback=callback)


def euler(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    timesteps: torch.Tensor | Sequence[int],
    schedule: Schedule,
    final_step: str = "denoise",
    callback: Callback = None,
) -> torch.Tensor:
    """Euler steps y <- y + (s_next - s) eps: deterministic, first order, one call per step (= DDIM)."""
    return euler_ancestral(
        eps_fn, x_T, timesteps, schedule, final_step=final_step, eta=0.0, callback=callback
    )


def euler_ancestral(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    timesteps: torch.Tensor | Sequence[int],
    schedule: Schedule,
    final_step: str = "denoise",
    generator: Generators = None,
    eta: float = 1.0,
    callback: Callback = None,
) -> torch.Tensor:
    """Euler down to s_down, then fresh noise of std s_up (s_down^2 + s_up^2 = s_next^2), one call per step.

    s_up = eta s_next sqrt(1 - s_next^2 / s^2), k-diffusion's get_ancestral_step; eta = 1 is DDPM's
    posterior variance (DDIM eta = 1), eta = 0 plain Euler.
    """
    path = solver_path(timesteps, schedule, final_step)
    generator = as_generator_list(generator, x_T.shape[0])
    y = x_T * (1.0 / path[0].alpha)
    for k, (s, t) in enumerate(zip(path[:-1], path[1:], strict=True)):
        x = y * s.alpha
        eps = eps_fn(x, t_batch(s.t, y)).to(y.dtype)
        sig, nxt = s.ve_sigma, t.ve_sigma
        up = min(nxt, eta * math.sqrt(nxt**2 * max(sig**2 - nxt**2, 0.0) / sig**2))
        down = math.sqrt(nxt**2 - up**2)
        y = torch.add(y, eps, alpha=down - sig)
        if up > 0.0:
            y.add_(randn(y.shape, generator, y.device, y.dtype), alpha=up)
        if callback is not None:
            report(callback, k, s, t, y * t.alpha, x0_estimate(x, eps, s))
    return y * path[-1].alpha


def heun(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    timesteps: torch.Tensor | Sequence[int],
    schedule: Schedule,
    final_step: str = "denoise",
    callback: Callback = None,
) -> torch.Tensor:
    """EDM's deterministic second-order sampler: Euler predictor, trapezoidal corrector with a call at its end."""
    path = solver_path(timesteps, schedule, final_step)
    y = x_T * (1.0 / path[0].alpha)
    for k, (s, t) in enumerate(zip(path[:-1], path[1:], strict=True)):
        x = y * s.alpha
        d = eps_fn(x, t_batch(s.t, y)).to(y.dtype)
        dt = t.ve_sigma - s.ve_sigma
        y_euler = torch.add(y, d, alpha=dt)
        if t.sigma == 0.0:
            y = y_euler
        else:
            d_next = eps_fn(y_euler * t.alpha, t_batch(t.t, y)).to(y.dtype)
            y = torch.add(y, d + d_next, alpha=0.5 * dt)
        if callback is not None:
            report(callback, k, s, t, y * t.alpha, x0_estimate(x, d, s))
    return y * path[-1].alpha
