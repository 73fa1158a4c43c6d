"""UniPC (Zhao et al. 2023, arXiv 2302.04867): a multistep predictor (UniP) and a corrector (UniC), data prediction.

Both are exponential-integrator updates in lambda from level s0 to t with the data prediction m:
    x_t = (sigma_t / sigma_s0) x_s0 - alpha_t phi1 m_s0 - alpha_t B(h) sum_k rho_k D_k,   phi1 = expm1(-h)
where D_k = (m_k - m_s0) / r_k are differences against earlier outputs (r_k = (lambda_k - lambda_s0) / h)
and rho solves the paper's order conditions R rho = b(h) (a Vandermonde system in r). B(h) = -h ("bh1") or
expm1(-h) ("bh2"). The corrector reuses the output at the new point, which the next step needs anyway, so it
raises the order by one (UniPC-p is order p + 1) at no extra network call; the step to the clean end and the
step into the last level are never corrected (no call follows them). Formulas and per-step orders follow
diffusers' UniPCMultistepScheduler (predict_x0=True), which the tests hold to 1e-6.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import ClassVar, Literal

import torch

from ddim.diffusion.schedule import Schedule
from ddim.samplers.base import Callback, EpsFn, SamplerError, SkipType, t_batch
from ddim.samplers.levels import Level, PathSampler, multistep_order, report, solver_path, x0_estimate
from ddim.settings import Count

VARIANTS = ("bh1", "bh2")


@dataclasses.dataclass(frozen=True, kw_only=True)
class UniPC(PathSampler):
    """UniPC-p: UniP-p predictor + UniC corrector (order p + 1, no extra call), data prediction; variant:
    bh2 (B(h) = expm1(-h), the paper's choice for unconditional sampling) | bh1 (B(h) = -h)."""

    name: ClassVar[str] = "unipc"
    steps: Count = 10
    skip_type: SkipType = "quadratic"  # the best spacing at 5-10 NFE on a trained model (docs/sampling.md)
    order: Literal[1, 2, 3] = 2
    variant: Literal[VARIANTS] = "bh2"
    corrector: bool = True
    lower_order_final: bool = True

    def head(self) -> str:
        return f"{self.name}{self.order}"

    def extras(self) -> list[str]:
        own = [self.variant] * (self.variant != "bh2") + ["nocorrector"] * (not self.corrector)
        return own + super().extras()

    def run(self, model, x_T, schedule, generator=None, callback=None) -> torch.Tensor:
        return unipc(
            model, x_T, self.sequence(schedule), schedule, self.order, self.variant, self.corrector,
            self.lower_order_final, self.final_step, callback,
        )  # fmt: skip


def check_unipc_options(order: int, variant: str) -> None:
    if isinstance(order, bool) or order not in (1, 2, 3):
        raise SamplerError(f"sampler.order must be 1, 2 or 3 for UniPC, got {order!r}.")
    if variant not in VARIANTS:
        raise SamplerError(
            f"Unknown sampler.variant {variant!r}; choose 'bh2' (B(h) = expm1(-h), the paper's choice for "
            "unconditional sampling) or 'bh1' (B(h) = -h)."
        )


def _weights(h: float, rks: list[float], variant: str, corrector: bool) -> tuple[float, float, list[float]]:
    """(phi1, B(h), rho) of one update; rks are the r_k of the earlier outputs used (len = order - 1)."""
    hh = -h
    phi1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else phi1
    order = len(rks) + 1
    rs = [*rks, 1.0]
    R = [[r ** (i - 1) for r in rs] for i in range(1, order + 1)]
    b, h_phi_k, factorial = [], phi1 / hh - 1.0, 1
    for i in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    if corrector:
        rho = [0.5] if order == 1 else _solve(R, b)
    elif order == 1:
        rho = []
    elif order == 2:
        rho = [0.5]  # the paper's fixed choice for UniP-2 (diffusers too)
    else:
        rho = _solve([row[:-1] for row in R[:-1]], b[:-1])
    return phi1, b_h, rho


def _solve(R: list[list[float]], b: list[float]) -> list[float]:
    # A 2x2 or 3x3 Vandermonde system of Python floats; solved on the CPU, off the sampling device.
    return torch.linalg.solve(
        torch.tensor(R, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    ).tolist()


def _update(
    x_s0: torch.Tensor,
    outputs: list[torch.Tensor],
    levels: list[Level],
    t: Level,
    variant: str,
    new_output: torch.Tensor | None = None,
) -> torch.Tensor:
    """UniP from levels[-1] to t with outputs (oldest first), or UniC when new_output (m at t) is given."""
    s0, m0 = levels[-1], outputs[-1]
    h = t.lam - s0.lam
    earlier = list(zip(reversed(levels[:-1]), reversed(outputs[:-1]), strict=True))  # newest first
    rks = [(lv.lam - s0.lam) / h for lv, _ in earlier]
    phi1, b_h, rho = _weights(h, rks, variant, corrector=new_output is not None)
    x = torch.add(x_s0 * (t.sigma / s0.sigma), m0, alpha=-t.alpha * phi1)
    scale = -t.alpha * b_h
    # The corrector has one more rho than earlier outputs: it weighs the new output.
    for rho_k, r, (_, m) in zip(rho, rks, earlier, strict=False):
        x.add_(m - m0, alpha=scale * rho_k / r)
    if new_output is not None:
        x.add_(new_output - m0, alpha=scale * rho[-1])
    return x


def unipc(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    timesteps: torch.Tensor | Sequence[int],
    schedule: Schedule,
    order: int = 2,
    variant: str = "bh2",
    corrector: bool = True,
    lower_order_final: bool = True,
    final_step: str = "denoise",
    callback: Callback = None,
) -> torch.Tensor:
    """UniPC-p (UniP-p predictor, UniC corrector); corrector=False gives the plain UniP-p multistep solver."""
    check_unipc_options(order, variant)
    path = solver_path(timesteps, schedule, final_step)
    n = len(path) - 1
    x, outputs, prev = x_T, [], None  # prev: (x where the last step started, its order)
    for k in range(n):
        s, t = path[k], path[k + 1]
        eps = eps_fn(x, t_batch(s.t, x)).to(x.dtype)
        m = x0_estimate(x, eps, s)
        if (
            t.sigma == 0.0
        ):  # the corrected x would be multiplied by sigma_t = 0: the clean end is the x0 estimate
            return report(callback, k, s, t, m, m)
        if corrector and prev is not None:
            x_start, p_prev = prev
            x = _update(x_start, outputs[-p_prev:], path[k - p_prev : k], s, variant, new_output=m)
        outputs = [*outputs, m][-order:]
        p = multistep_order(order, k, n, lower_order_final)
        prev = (x, p)
        x = _update(x, outputs[-p:], path[k - p + 1 : k + 1], t, variant)
        report(callback, k, s, t, x, m)
    return x
