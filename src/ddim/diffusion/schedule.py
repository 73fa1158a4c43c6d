"""Noise schedules and timestep sub-sequences: the single source of truth for both.

Tables are float64 (as in the reference code) and cast to the model's dtype at use.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch

from ddim.errors import DDIMError
from ddim.settings import Count, Range

SKIP_TYPES = ("uniform", "quadratic", "logsnr", "karras", "leading", "trailing")
# Rules defined on the noise levels of the table rather than on timestep indices.
TABLE_SKIP_TYPES = ("logsnr", "karras")
KARRAS_RHO = 7.0


class ScheduleError(DDIMError, ValueError):
    """A noise schedule or timestep sequence setting is out of range; the message names the setting and the fix."""


def make_betas(
    kind: Literal["linear", "cosine"] = "linear",
    num_timesteps: Count = 1000,
    beta_start: Annotated[float, Range(gt=0, lt=1)] = 1e-4,
    beta_end: Annotated[float, Range(gt=0, lt=1)] = 0.02,
) -> torch.Tensor:
    """beta_1..beta_T as float64. "linear" is DDPM's schedule; "cosine" is Nichol & Dhariwal's (an option)."""
    if num_timesteps < 1:
        raise ScheduleError(f"num_timesteps must be >= 1, got {num_timesteps}.")
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    if kind == "cosine":
        s = 0.008
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - f[1:] / f[:-1]).clamp(max=0.999)
    raise ScheduleError(f"Unknown beta schedule {kind!r}; choose 'linear' or 'cosine'.")


def schedule_config(**given: object) -> dict[str, object]:
    """make_betas' keyword arguments with its defaults filled in: what checkpoints record as the schedule."""
    params = inspect.signature(make_betas).parameters
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise ScheduleError(f"Unknown schedule keys {unknown}; valid keys are {list(params)}.")
    return {name: given.get(name, p.default) for name, p in params.items()}


@dataclass(frozen=True, eq=False)
class Schedule:
    """Immutable table of betas and a_t = prod_{s<=t} (1 - beta_s), indexed 0..T-1."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        betas = self.betas.to(torch.float64)
        if betas.ndim != 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ScheduleError("betas must be a 1-D tensor with values in (0, 1).")
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alphas_cumprod", torch.cumprod(1.0 - betas, dim=0))

    @classmethod
    def from_config(
        cls, kind: str = "linear", num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> Schedule:
        return cls(make_betas(kind, num_timesteps, beta_start, beta_end))

    @property
    def num_timesteps(self) -> int:
        return self.betas.numel()

    def alpha_bar(self, t: int) -> float:
        """a_t as a Python float, with the paper's convention a_{-1} = 1 (the step after the last one)."""
        if t == -1:
            return 1.0
        if not 0 <= t < self.num_timesteps:
            raise IndexError(f"timestep {t} outside [-1, {self.num_timesteps - 1}].")
        return float(self.alphas_cumprod[t])


def timestep_sequence(
    steps: int | None = None,
    skip_type: str = "uniform",
    num_timesteps: int = 1000,
    custom: list[int] | tuple[int, ...] | None = None,
    alphas_cumprod: torch.Tensor | None = None,
) -> torch.Tensor:
    """The increasing sub-sequence tau of {0..T-1} a sampler visits (in reverse), as an int64 tensor.

    uniform:   tau_i = floor(i * T / S), i = 0..S-1  (the DDIM paper; starts at 0)
    quadratic: tau_i = floor((sqrt(0.8 T) * i / (S - 1))^2), i = 0..S-1  (DDIM's CIFAR10 choice)
    leading:   tau_i = i * (T // S)  (diffusers' "leading"; equals uniform when S divides T)
    trailing:  T - 1 - round(i * T / S), i = 0..S-1  (diffusers' "trailing"; starts at T - 1, ends above 0)
    logsnr:    uniform in log-SNR lambda = log(sqrt(a) / sqrt(1 - a)) from lambda(T-1) to lambda(0)
    karras:    Karras et al. 2022, sigma_i^(1/7) uniform between sigma(T-1) and sigma(0), sigma = sqrt((1-a)/a)
    custom:    the given list, which must be non-decreasing and inside [0, T-1].
    logsnr and karras need the table (alphas_cumprod): each noise level is mapped to a fractional timestep
    by linear interpolation of log sigma on the integer grid (diffusers' `_sigma_to_t`), then rounded;
    where rounding makes two equal, the higher ones are pushed up by one (and back below T) so all S stay
    distinct.
    The quadratic rule repeats small timesteps for larger S (S=50 starts 0, 0, 1, ...); those steps are
    exact no-ops for DDIM but still cost a network call, and are kept for faithful reproduction.
    """
    if custom is not None:
        return custom_sequence(custom, num_timesteps)
    if steps is None or int(steps) != steps or steps < 1 or steps > num_timesteps:
        raise ScheduleError(
            f"sampler.steps must be an integer in [1, {num_timesteps}] (the number of diffusion steps T), "
            f"got {steps}."
        )
    steps, T = int(steps), num_timesteps
    if skip_type == "uniform":
        return torch.tensor([i * T // steps for i in range(steps)], dtype=torch.int64)
    if skip_type == "quadratic":
        if steps == 1:
            return torch.zeros(1, dtype=torch.int64)
        # Float64 like numpy's linspace in the reference implementation, then truncate.
        grid = torch.linspace(0, math.sqrt(0.8 * T), steps, dtype=torch.float64) ** 2
        return grid.to(torch.int64)
    if skip_type == "leading":
        return torch.arange(steps, dtype=torch.int64) * (T // steps)
    if skip_type == "trailing":
        # np.arange(T, 0, -T/S).round() - 1 as in diffusers; torch.round also rounds half to even.
        down = torch.tensor([T - i * (T / steps) for i in range(steps)], dtype=torch.float64)
        return (down.round().to(torch.int64) - 1).flip(0)
    if skip_type in TABLE_SKIP_TYPES:
        if alphas_cumprod is None or alphas_cumprod.numel() != T:
            raise ScheduleError(
                f"sampler.skip_type={skip_type} needs the noise schedule's alphas_cumprod (length {T})."
            )
        return _noise_level_sequence(steps, skip_type, alphas_cumprod.to(torch.float64))
    raise ScheduleError(
        f"Unknown sampler.skip_type {skip_type!r}; choose one of {SKIP_TYPES} or pass custom timesteps."
    )


def custom_sequence(custom: list[int] | tuple[int, ...], num_timesteps: int) -> torch.Tensor:
    """A given sequence, checked: non-empty, inside [0, T-1], non-decreasing."""
    seq = torch.as_tensor(list(custom), dtype=torch.int64)
    if seq.ndim != 1 or seq.numel() == 0:
        raise ScheduleError("A custom timestep sequence must be a non-empty list of integers.")
    if int(seq.min()) < 0 or int(seq.max()) >= num_timesteps:
        raise ScheduleError(f"Custom timesteps must lie in [0, {num_timesteps - 1}], got {seq.tolist()}.")
    if bool((seq[1:] < seq[:-1]).any()):
        raise ScheduleError("Custom timesteps must be given in increasing order, e.g. [0, 250, 500, 750].")
    return seq


def _noise_level_sequence(steps: int, skip_type: str, a: torch.Tensor) -> torch.Tensor:
    log_sigma = 0.5 * (torch.log1p(-a) - torch.log(a))  # increasing in t; lambda = -log_sigma
    lo, hi = float(log_sigma[0]), float(log_sigma[-1])
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    if skip_type == "logsnr":
        targets = lo + ramp * (hi - lo)
    else:
        inv_rho = 1.0 / KARRAS_RHO
        s_min, s_max = math.exp(lo) ** inv_rho, math.exp(hi) ** inv_rho
        targets = torch.log((s_min + ramp * (s_max - s_min)) ** KARRAS_RHO)
    idx = torch.searchsorted(log_sigma, targets).clamp(1, a.numel() - 1)
    left, right = log_sigma[idx - 1], log_sigma[idx]
    frac = ((targets - left) / (right - left)).clamp(0, 1)
    seq = (idx - 1 + frac).round().to(torch.int64).tolist()
    for i in range(1, steps):
        seq[i] = max(seq[i], seq[i - 1] + 1)
    seq[-1] = min(seq[-1], a.numel() - 1)
    for i in range(steps - 2, -1, -1):  # and back down where the push reached past T - 1 (S close to T)
        seq[i] = min(seq[i], seq[i + 1] - 1)
    return torch.tensor(seq, dtype=torch.int64)
