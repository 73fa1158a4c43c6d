"""DPM-Solver (Lu et al. 2022, arXiv 2206.00927) and DPM-Solver++ (Lu et al. 2022, arXiv 2211.01095).

Exponential integrators of the probability-flow ODE in lambda = log(alpha / sigma). With the network output
m taken as the data prediction x0 (DPM-Solver++) or as eps (DPM-Solver), one step from level s to t is

    x_t = ratio x_s - c [phi1 D0 + phi2 D1 + phi3 D2]
    data:  ratio = sigma_t / sigma_s, c = alpha_t, hh = -h      noise: ratio = alpha_t / alpha_s, c = sigma_t, hh = h
    phi1 = expm1(hh), phi2 = expm1(hh) / hh - 1 ("heun"; 0.5 phi1 for "midpoint"), phi3 = (expm1(hh) - hh) / hh^2 - 1/2

with h = lambda_t - lambda_s and D0, D1, D2 finite differences of m in lambda (scaled by h). Order 1 is DDIM.
One deliberate difference: for the third-order multistep update with solver_type="heun" the D2 term gets
its Taylor weight, twice the reference code's (diffusers ignores solver_type at order 3); with the default
"midpoint" the update is the reference's, which the tests measure to be second order.
The SDE variant of DPM-Solver++ integrates the reverse SDE: hh = -2h, ratio = e^{-h} sigma_t / sigma_s, plus
noise of std sigma_t sqrt(1 - e^{-2h}). The formulas and the choice of orders per step are those of
diffusers' DPMSolverMultistepScheduler / DPMSolverSinglestepScheduler (the tests hold them to 1e-6); the
levels come from ddim.samplers.levels. Coefficients are Python floats; no device synchronisation.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import ClassVar, Literal

import torch

from ddim.diffusion.schedule import Schedule
from ddim.samplers.base import (
    Callback,
    EpsFn,
    Generators,
    SamplerError,
    SkipType,
    as_generator_list,
    randn,
    t_batch,
)
from ddim.samplers.levels import Level, PathSampler, multistep_order, report, solver_path, x0_estimate
from ddim.settings import Count

log = logging.getLogger(__name__)
UNSTABLE_BELOW_NFE = (
    6  # DPM-Solver-2 (noise prediction) measured worse than DDIM below this (docs/sampling.md)
)

SOLVER_TYPES = ("midpoint", "heun")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPMSolverPP(PathSampler):
    """DPM-Solver++(kM): multistep, data prediction, one call per step; order 1-3 (1 = DDIM, 2 = the paper's
    2M, 3 = 3M); solver_type: midpoint (the papers' and reference code's weights) | heun (Taylor-exact);
    lower_order_final: lower orders on the last steps (stable at few steps)."""

    name: ClassVar[str] = "dpm_solver_pp"
    steps: Count = 10
    skip_type: SkipType = "quadratic"  # the best spacing at 5-10 NFE on a trained model (docs/sampling.md)
    order: Literal[1, 2, 3] = 2
    solver_type: Literal[SOLVER_TYPES] = "midpoint"
    lower_order_final: bool = True

    def head(self) -> str:
        return f"{self.name}{self.order}"

    def extras(self) -> list[str]:
        return [self.solver_type] * (self.solver_type != "midpoint") + super().extras()

    def run(self, model, x_T, schedule, generator=None, callback=None) -> torch.Tensor:
        return dpm_solver_multistep(
            model, x_T, self.sequence(schedule), schedule, self.order, predict_x0=True,
            sde=self.stochastic, solver_type=self.solver_type, lower_order_final=self.lower_order_final,
            final_step=self.final_step, generator=generator, callback=callback,
        )  # fmt: skip


@dataclasses.dataclass(frozen=True, kw_only=True)
class SDEDPMSolverPP(DPMSolverPP):
    """SDE-DPM-Solver++(2M): the multistep solver of the reverse SDE (stochastic; order 1 or 2)."""

    name: ClassVar[str] = "sde_dpm_solver_pp"
    stochastic: ClassVar[bool] = True
    steps: Count = 20
    skip_type: SkipType = "logsnr"  # not measured on a trained model (the real-model table is deterministic)
    order: Literal[1, 2] = 2


@dataclasses.dataclass(frozen=True, kw_only=True)
class DPMSolver(DPMSolverPP):
    """DPM-Solver-k (Lu et al. 2022): singlestep, noise prediction, order 1-3 (DPM-Solver-2/-3)."""

    name: ClassVar[str] = "dpm_solver"
    skip_type: SkipType = "uniform"  # the best spacing at 5-10 NFE on a trained model (docs/sampling.md)
    order: Literal[1, 2, 3] = 2  # order 3 diverges at few steps on a trained model (docs/sampling.md)

    def check_schedule(self, schedule: Schedule) -> DPMSolver:
        checked = super().check_schedule(schedule)
        nfe = self.nfe(schedule)
        if self.order > 1 and nfe < UNSTABLE_BELOW_NFE:
            log.warning(
                f"sampler=dpm_solver (noise prediction) makes {nfe} network calls: below "
                f"{UNSTABLE_BELOW_NFE} it was worse than DDIM on a trained model (docs/sampling.md); "
                "sampler=dpm_solver_pp is its stable data-prediction form."
            )
        return checked

    def run(self, model, x_T, schedule, generator=None, callback=None) -> torch.Tensor:
        return dpm_solver_singlestep(
            model, x_T, self.sequence(schedule), schedule, self.order, predict_x0=False,
            solver_type=self.solver_type, lower_order_final=self.lower_order_final,
            final_step=self.final_step, callback=callback,
        )  # fmt: skip


def _phis(hh: float, solver_type: str) -> tuple[float, float, float]:
    phi1 = math.expm1(hh)
    phi2 = 0.5 * phi1 if solver_type == "midpoint" else phi1 / hh - 1.0
    phi3 = (phi1 - hh) / hh**2 - 0.5
    return phi1, phi2, phi3


def _frame(s: Level, t: Level, predict_x0: bool, sde: bool) -> tuple[float, float, float, float]:
    """(ratio, c, hh, noise std) of the step s -> t: x_t = ratio x_s - c [phi(hh) . D] + std z."""
    h = t.lam - s.lam
    if not predict_x0:
        return t.alpha / s.alpha, t.sigma, h, 0.0
    if sde:
        return t.sigma / s.sigma * math.exp(-h), t.alpha, -2.0 * h, t.sigma * math.sqrt(-math.expm1(-2.0 * h))
    return t.sigma / s.sigma, t.alpha, -h, 0.0


def dpm_solver_multistep(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    timesteps: torch.Tensor | Sequence[int],
    schedule: Schedule,
    order: int = 2,
    predict_x0: bool = True,
    sde: bool = False,
    solver_type: str = "midpoint",
    lower_order_final: bool = True,
    final_step: str = "denoise",
    generator: Generators = None,
    callback: Callback = None,
) -> torch.Tensor:
    """DPM-Solver++(kM) (predict_x0=True, the default) or multistep DPM-Solver (eps), one call per step.

    Step k uses the last min(order, k + 1) outputs; with lower_order_final the last steps drop to the
    steps left. sde=True is SDE-DPM-Solver++ (data prediction, order <= 2): it draws one normal tensor per
    step except the last (noise contract of ddim.samplers.sample).
    """
    if sde and (not predict_x0 or order > 2):
        raise SamplerError("The SDE variant is DPM-Solver++ (data prediction) of order 1 or 2.")
    path = solver_path(timesteps, schedule, final_step)
    generator = as_generator_list(generator, x_T.shape[0])
    n = len(path) - 1
    x, outputs = x_T, []
    for k in range(n):
        s, t = path[k], path[k + 1]
        eps = eps_fn(x, t_batch(s.t, x)).to(x.dtype)
        x0_hat = x0_estimate(x, eps, s) if predict_x0 or callback or t.sigma == 0.0 else None
        if t.sigma == 0.0:
            return report(
                callback, k, s, t, x0_hat, x0_hat
            )  # to lambda = inf only the first-order step is finite
        outputs = [*outputs, x0_hat if predict_x0 else eps][-order:]
        p = multistep_order(order, k, n, lower_order_final)
        ratio, c, hh, std = _frame(s, t, predict_x0, sde)
        phi1, phi2, phi3 = _phis(hh, solver_type)
        m0 = outputs[-1]
        x = torch.add(x * ratio, m0, alpha=-c * phi1)
        if p >= 2:
            r0 = (s.lam - path[k - 1].lam) / (t.lam - s.lam)
            d1_0 = (m0 - outputs[-2]) / r0
            if p == 2:
                x.add_(d1_0, alpha=-c * phi2)
            else:
                r1 = (path[k - 1].lam - path[k - 2].lam) / (t.lam - s.lam)
                d1_1 = (outputs[-2] - outputs[-3]) / r1
                d2 = (d1_0 - d1_1) / (r0 + r1)
                # D2 here is h^2 m''/2, but the reference code and diffusers weigh it with phi3 as if it were
                # h^2 m'': their 3M is second order (tests fit ~2). "heun" uses the Taylor weight 2 phi3 (~3).
                d2_weight = 2.0 * phi3 if solver_type == "heun" else phi3
                x.add_(torch.add(d1_0, d2, alpha=r0), alpha=-c * (phi1 / hh - 1.0)).add_(
                    d2, alpha=-c * d2_weight
                )
        if std > 0.0:
            x.add_(randn(x.shape, generator, x.device, x.dtype), alpha=std)
        report(callback, k, s, t, x, x0_hat)
    return x


def singlestep_orders(n: int, order: int, lower_order_final: bool, denoise: bool) -> list[int]:
    """Orders of the n steps: groups 1, 2, .., order (a group of k steps is one k-th order singlestep update
    whose intermediate points are the sequence's own timesteps); as diffusers' get_order_list, the
    last group is split off as a first-order step when it would be full and lower_order_final is set."""
    orders = [i % order + 1 for i in range(n)]
    if (lower_order_final and order > 1 and n % order == 0) or denoise:
        orders[-1] = 1
    return orders


def dpm_solver_singlestep(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    timesteps: torch.Tensor | Sequence[int],
    schedule: Schedule,
    order: int = 2,
    predict_x0: bool = False,
    solver_type: str = "midpoint",
    lower_order_final: bool = True,
    final_step: str = "denoise",
    callback: Callback = None,
) -> torch.Tensor:
    """Singlestep DPM-Solver-k (eps prediction, the DPM-Solver paper's) or DPM-Solver++(kS), one call per step.

    A group of k consecutive steps is one k-th order update from the group's first level; its intermediate
    points are the next timesteps of the sequence, reached by the lower-order updates of the same group
    (diffusers' convention; the reference code places them at r = 1/3, 2/3 of the step in lambda instead).
    For order 3, solver_type "midpoint" is the paper's DPM-Solver-3 update (uses the second intermediate
    point only); "heun" uses both.
    """
    path = solver_path(timesteps, schedule, final_step)
    n = len(path) - 1
    orders = singlestep_orders(n, order, lower_order_final, path[-1].sigma == 0.0)
    x = x_T
    base_x, outputs = x_T, []
    for k in range(n):
        s, t = path[k], path[k + 1]
        eps = eps_fn(x, t_batch(s.t, x)).to(x.dtype)
        x0_hat = x0_estimate(x, eps, s) if predict_x0 or callback or t.sigma == 0.0 else None
        if t.sigma == 0.0:
            return report(callback, k, s, t, x0_hat, x0_hat)
        p = orders[k]
        if p == 1:
            base_x, outputs = x, []
        outputs.append(x0_hat if predict_x0 else eps)
        base = path[k - p + 1]
        ratio, c, hh, _ = _frame(base, t, predict_x0, False)
        phi1, phi2, phi3 = _phis(hh, solver_type)
        h = t.lam - base.lam
        x = torch.add(base_x * ratio, outputs[0], alpha=-c * phi1)
        if p == 2:
            r0 = (s.lam - base.lam) / h
            x.add_((outputs[1] - outputs[0]) / r0, alpha=-c * phi2)
        elif p == 3:
            r1, r0 = (path[k - 1].lam - base.lam) / h, (s.lam - base.lam) / h
            d1_1 = (outputs[2] - outputs[0]) / r0
            taylor2 = phi1 / hh - 1.0
            if solver_type == "midpoint":
                x.add_(d1_1, alpha=-c * taylor2)
            else:
                d1_0 = (outputs[1] - outputs[0]) / r1
                d1 = (d1_0 * r0 - d1_1 * r1) / (r0 - r1)
                d2 = (d1_1 - d1_0) * (2.0 / (r0 - r1))
                x.add_(d1, alpha=-c * taylor2).add_(d2, alpha=-c * phi3)
        report(callback, k, s, t, x, x0_hat)
    return x
