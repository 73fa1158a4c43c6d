"""PNDM (Liu et al. 2022, arXiv 2202.09778): pseudo numerical methods on the DDIM transfer.

Every step is the deterministic DDIM step from t to s (the paper's transfer phi), fed with a combination of
eps evaluations instead of one: PLMS uses the 4th-order Adams-Bashforth weights (55, -59, 37, -9) / 24 on
the last four steps' eps, and needs three earlier steps to start. The paper warms up with pseudo
Runge-Kutta (PRK: RK4's four evaluations per step, at t, twice at the midpoint, and at s), so the first
three steps cost 4 calls each; warm_start="plms" is the cheaper start diffusers uses with skip_prk_steps
(one pseudo improved-Euler step with 2 calls, then Adams-Bashforth of growing order). Like the paper and
diffusers, the weights take the steps as evenly spaced; the error against the exact ODE still falls only at
second order (the weights act on eps in t, not in the ODE's variable), and on the Gaussian oracle log-SNR
spacing beats even spacing (benchmarks/solver_table.py).
The midpoint of a PRK step from t to s is t - (t - s) // 2 (diffusers: t - (T // S) // 2). The warm-up
never takes the last step (the step into the clean end or into tau_0).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar, Literal

import torch

from ddim.diffusion.schedule import Schedule
from ddim.samplers.base import Callback, EpsFn, SamplerError, SkipType, t_batch
from ddim.samplers.ddim import generalized_step
from ddim.samplers.levels import PathSampler, report, solver_path, x0_estimate
from ddim.settings import Count

WARM_STARTS = ("prk", "plms")
_ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3 / 2, -1 / 2),
    3: (23 / 12, -16 / 12, 5 / 12),
    4: (55 / 24, -59 / 24, 37 / 24, -9 / 24),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class PNDM(PathSampler):
    """PNDM: PLMS with a pseudo Runge-Kutta warm start (prk: steps + 9 calls) or the 2-call start (plms:
    steps + 1 calls). Log-SNR spacing measured best on the Gaussian oracle (benchmarks/solver_table.py)."""

    name: ClassVar[str] = "pndm"
    steps: Count = 20
    skip_type: SkipType = "uniform"  # the best spacing at 5 and 14 NFE on a trained model (docs/sampling.md)
    warm_start: Literal[WARM_STARTS] = "prk"

    def nfe(self, schedule: Schedule) -> int:
        return pndm_nfe(self.path_steps(schedule), self.warm_start)

    def extras(self) -> list[str]:
        return [self.warm_start] * (self.warm_start != "prk") + super().extras()

    def run(self, model, x_T, schedule, generator=None, callback=None) -> torch.Tensor:
        return pndm(model, x_T, self.sequence(schedule), schedule, self.warm_start, self.final_step, callback)


def check_warm_start(warm_start: str) -> str:
    if warm_start not in WARM_STARTS:
        raise SamplerError(
            f"Unknown sampler.warm_start {warm_start!r}; choose 'prk' (the PNDM paper: pseudo Runge-Kutta, "
            "4 calls on each of the first 3 steps) or 'plms' (one 2-call step, as diffusers' skip_prk_steps)."
        )
    return warm_start


def warm_up_steps(n: int, warm_start: str) -> int:
    """Steps of the warm-up; never the last of the n steps."""
    return min(3 if warm_start == "prk" else 1, n - 1)


def pndm_nfe(n: int, warm_start: str) -> int:
    """Network calls for n steps: one per step, plus 3 per PRK warm-up step or 1 for the PLMS start."""
    return n + warm_up_steps(n, warm_start) * (3 if warm_start == "prk" else 1)


def pndm(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    timesteps: torch.Tensor | Sequence[int],
    schedule: Schedule,
    warm_start: str = "prk",
    final_step: str = "denoise",
    callback: Callback = None,
) -> torch.Tensor:
    """PNDM sampling: PRK (or a PLMS improved-Euler) warm-up, then PLMS; deterministic."""
    check_warm_start(warm_start)
    path = solver_path(timesteps, schedule, final_step)
    n = len(path) - 1
    warm = warm_up_steps(n, warm_start)
    table = schedule.alphas_cumprod.tolist()

    def eps_at(x: torch.Tensor, t: int) -> torch.Tensor:
        return eps_fn(x, t_batch(t, x)).to(x.dtype)

    def transfer(x: torch.Tensor, eps: torch.Tensor, a_t: float, a_s: float) -> torch.Tensor:
        return generalized_step(x, eps, a_t, a_s, 0.0, None)[0]

    x, history = x_T, []  # history: eps at the start of each step (the Adams-Bashforth nodes)
    for k in range(n):
        s, t = path[k], path[k + 1]
        a_s, a_t = table[s.t], table[t.t] if t.t >= 0 else 1.0
        e = eps_at(x, s.t)
        history = [*history, e][-4:]
        if k < warm and warm_start == "prk":
            mid = s.t - (s.t - t.t) // 2
            e2 = eps_at(transfer(x, e, a_s, table[mid]), mid)
            e3 = eps_at(transfer(x, e2, a_s, table[mid]), mid)
            e4 = eps_at(transfer(x, e3, a_s, a_t), t.t)
            e = (e + 2 * e2 + 2 * e3 + e4) / 6
        elif k < warm:
            e = (e + eps_at(transfer(x, e, a_s, a_t), t.t)) / 2
        else:
            weights = _ADAMS_BASHFORTH[len(history)]
            e = sum(w * h for w, h in zip(weights, reversed(history), strict=True))
        x_next = transfer(x, e, a_s, a_t)
        if callback is not None:
            report(callback, k, s, t, x_next, x0_estimate(x, e, s))  # the eps the transfer used
        x = x_next
    return x
