"""The generalized (DDIM) sampler family of Song et al. 2021, eq. (12), as stateless functions, and its settings.

A sampler is a loop over consecutive pairs (t, s) of a timestep sub-sequence tau, visited from the end:
(tau_{S-1}, tau_{S-2}), ..., (tau_0, -1), with a_{-1} = 1 so the last step returns x_0. All coefficients
are Python floats taken from the float64 schedule, so a step costs a handful of elementwise kernels and
never synchronises with the device. Noise follows the contract of ddim.samplers.base.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import ClassVar, Literal

import torch

from ddim.diffusion.forward import x0_from_eps
from ddim.diffusion.schedule import Schedule
from ddim.samplers.base import (
    Callback,
    EpsFn,
    Generators,
    Sampler,
    SamplerError,
    Step,
    as_generator_list,
    increasing_sequence,
    randn,
    t_batch,
)
from ddim.settings import NonNegative

VARIANCES = ("eta", "sigma_hat")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DDIM(Sampler):
    """eta: 0 = DDIM (deterministic), 1 = DDPM's posterior variance on the sub-sequence; variance: "eta" (the
    eq. 12 family) or "sigma_hat" (DDPM with the larger variance 1 - a_t/a_s, the last row of DDIM Table 1);
    clip_x0: clip x0_hat to [-1, 1]."""

    name: ClassVar[str] = "ddim"
    eta: NonNegative = 0.0
    variance: Literal[VARIANCES] = "eta"
    clip_x0: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.eta, int):
            object.__setattr__(self, "eta", float(self.eta))  # `sampler.eta=0` arrives as an int
        super().__post_init__()

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return self.eta > 0 or self.variance == "sigma_hat"

    def check_schedule(self, schedule: Schedule) -> DDIM:
        super().check_schedule(schedule)
        check_eta_fits(self.eta, self.variance, _pairs(self.sequence(schedule), schedule))
        return self

    def nfe(self, schedule: Schedule) -> int:
        return len(self.sequence(schedule))  # a repeated timestep (quadratic, large S) is still a call

    def head(self) -> str:
        return "sigma_hat" if self.variance == "sigma_hat" else f"eta{self.eta:g}"

    def extras(self) -> list[str]:
        return ["clip"] * self.clip_x0

    def run(
        self,
        model: EpsFn,
        x_T: torch.Tensor,
        schedule: Schedule,
        generator: Generators = None,
        callback: Callback = None,
    ) -> torch.Tensor:
        return sample(
            model,
            x_T,
            self.sequence(schedule),
            schedule,
            self.eta,
            self.variance,
            self.clip_x0,
            generator,
            callback,
        )


def noise_std(a_t: float, a_s: float, eta: float, variance: str = "eta") -> float:
    """Standard deviation of the noise added on the step from t to s (0 means no draw)."""
    if variance == "sigma_hat":
        # No noise on the step that lands on x_0 (a_s = 1), as in DDPM.
        return math.sqrt(max(1.0 - a_t / a_s, 0.0)) if a_s < 1.0 else 0.0
    if eta == 0.0:
        return 0.0
    return eta * math.sqrt((1.0 - a_s) / (1.0 - a_t) * max(1.0 - a_t / a_s, 0.0))


def check_eta_fits(eta: float, variance: str, pairs: list[tuple[int, float, float]]) -> None:
    """eq. 12 needs 1 - a_s - sigma^2 >= 0 on every step: eta <= 1 always fits, larger eta may not."""
    if variance != "eta":
        return
    for _, a_t, a_s in pairs:
        std = noise_std(a_t, a_s, eta)
        if 1.0 - a_s - std * std < -1e-12:
            raise SamplerError(
                f"sampler.eta={eta} is too large for the step a_t={a_t:.6g} -> a_s={a_s:.6g} of this schedule "
                "(1 - a_s - sigma^2 < 0); use eta <= 1."
            )


def generalized_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    a_t: float,
    a_s: float,
    eta: float,
    noise: torch.Tensor | None,
    clip_x0: bool = False,
    variance: str = "eta",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step from x_t to x_s (s before t) given eps = eps_theta(x_t, t); returns (x_s, x0_hat).

    variance="eta" (eq. 12): x_s = sqrt(a_s) x0_hat + sqrt(1 - a_s - sigma^2) eps + sigma z,
        sigma = eta sqrt((1 - a_s)/(1 - a_t)) sqrt(1 - a_t/a_s). With clip_x0 the clipped x0_hat is used
        and eps is kept (diffusers' clip_sample behaviour); the paper's eta samplers do not clip.
    variance="sigma_hat": DDPM posterior mean with x0_hat (clipped if clip_x0), plus noise of variance
        1 - a_t/a_s, except on the step to a_s = 1. `eta` is ignored.
    `noise` may be None only when the step adds no noise. With eta = 0 the step is symmetric in time, so
    generalized_step(x_s, eps, a_s, a_t, 0.0, None) is the deterministic encoding step from s to t.
    """
    x0_hat = x0_from_eps(x_t, eps, math.sqrt(a_t), math.sqrt(1.0 - a_t))
    if clip_x0:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
    std = noise_std(a_t, a_s, eta, variance)
    if variance == "sigma_hat":
        beta = 1.0 - a_t / a_s
        c_x0 = math.sqrt(a_s) * beta / (1.0 - a_t)
        c_xt = math.sqrt(1.0 - beta) * (1.0 - a_s) / (1.0 - a_t)
        x_s = torch.add(x0_hat * c_x0, x_t, alpha=c_xt)
    else:
        c_eps = 1.0 - a_s - std * std
        if c_eps < -1e-12:
            raise SamplerError(
                f"sampler.eta={eta} is too large for this step (1 - a_s - sigma^2 < 0); use eta <= 1."
            )
        x_s = torch.add(x0_hat * math.sqrt(a_s), eps, alpha=math.sqrt(max(c_eps, 0.0)))
    if std > 0.0:
        if noise is None:
            raise SamplerError("This step adds noise (sigma > 0) but no noise tensor was given.")
        x_s = x_s.add_(noise, alpha=std)
    return x_s, x0_hat


def _pairs(timesteps: torch.Tensor | Sequence[int], schedule: Schedule) -> list[tuple[int, float, float]]:
    """(t, a_t, a_s) for each step in sampling order; a_s of the last step is a_{-1} = 1."""
    seq = increasing_sequence(timesteps, schedule)
    table = schedule.alphas_cumprod.tolist()
    prev = [-1, *seq[:-1]]
    return [
        (t, table[t], table[s] if s >= 0 else 1.0) for t, s in zip(reversed(seq), reversed(prev), strict=True)
    ]


def sample(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    timesteps: torch.Tensor | Sequence[int],
    schedule: Schedule,
    eta: float = 0.0,
    variance: str = "eta",
    clip_x0: bool = False,
    generator: Generators = None,
    callback: Callback = None,
) -> torch.Tensor:
    """Run the generalized sampler from x_T down the increasing sub-sequence `timesteps` (visited in reverse).

    eps_fn(x, t) gets t as an int64 tensor of shape [B]. Call it under torch.no_grad() for networks.
    eta = 0 is DDIM (deterministic), eta = 1 DDPM's posterior variance on the sub-sequence;
    variance="sigma_hat" (with clip_x0=True) is the last row of DDIM Table 1. A model with a learned
    variance (ddim.diffusion.parameterization.ModelFn) sets the noise of the ancestral (eta = 1) sampler.
    """
    if variance not in VARIANCES:
        raise SamplerError(f"Unknown sampler.variance {variance!r}; choose one of {VARIANCES}.")
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise SamplerError(f"sampler.eta must be a number >= 0 (0 = DDIM, 1 = DDPM), got {eta!r}.")
    pairs = _pairs(timesteps, schedule)
    check_eta_fits(eta, variance, pairs)
    generator = as_generator_list(generator, x_T.shape[0])
    learned = getattr(eps_fn, "step_variance", None) if variance == "eta" and eta == 1.0 else None
    x = x_T
    for i, (t, a_t, a_s) in enumerate(pairs):
        log_var = None
        if learned is None:
            eps = eps_fn(x, t_batch(t, x)).to(x.dtype)
        else:
            eps, log_var = learned(x, t_batch(t, x), a_t, a_s)
            eps = eps.to(x.dtype)
        std = noise_std(a_t, a_s, eta, variance)
        noise = randn(x.shape, generator, x.device, x.dtype) if std > 0.0 else None
        if noise is not None and log_var is not None:
            noise = noise * (0.5 * log_var.to(x.dtype)).exp() / std  # so the step adds N(0, exp(log_var))
        x, x0_hat = generalized_step(x, eps, a_t, a_s, eta, noise, clip_x0, variance)
        if callback is not None:
            callback(Step(i, t, pairs[i + 1][0] if i + 1 < len(pairs) else -1, x, x0_hat))
    return x


def encode(
    eps_fn: EpsFn,
    x0: torch.Tensor,
    timesteps: torch.Tensor | Sequence[int],
    schedule: Schedule,
    callback: Callback = None,
) -> torch.Tensor:
    """Deterministic encoding x_0 -> x_T: the eta = 0 step run forward in time (Euler on the ODE, eq. 14).

    Each step goes from x_s to x_t (s before t in tau, s = -1 for x_0) with eps evaluated where the step
    starts, eps_theta(x_s, s), which makes it the explicit Euler step of the ODE in the paper's
    (sigma = sqrt(1 - a)/sqrt(a), x / sqrt(a)) variables. The first step starts at x_0 (a = 1), where the
    network is undefined; it uses eps_theta(x_0, tau_0), the nearest noise level the network knows
    (sqrt(1 - a_0) = 0.01 for DDPM's schedule). Other codes (diffusers' DDIMInverseScheduler,
    prompt-to-prompt) evaluate eps at the destination step (x_s, t) instead.
    The callback's Step has t = the timestep eps was evaluated at and t_next = where x now is.
    """
    seq = increasing_sequence(timesteps, schedule)
    table = schedule.alphas_cumprod.tolist()
    x, s = x0, -1
    for i, t in enumerate(seq):
        a_s = table[s] if s >= 0 else 1.0
        evaluated = s if s >= 0 else seq[0]
        eps = eps_fn(x, t_batch(evaluated, x)).to(x.dtype)
        x, x0_hat = generalized_step(x, eps, a_s, table[t], 0.0, None)
        if callback is not None:
            callback(Step(i, evaluated, t, x, x0_hat))
        s = t
    return x


def reconstruct(
    eps_fn: EpsFn, x0: torch.Tensor, timesteps: torch.Tensor | Sequence[int], schedule: Schedule
) -> torch.Tensor:
    """decode(encode(x_0)) with eta = 0 on the same sub-sequence (DDIM Table 2)."""
    return sample(eps_fn, encode(eps_fn, x0, timesteps, schedule), timesteps, schedule, eta=0.0)
