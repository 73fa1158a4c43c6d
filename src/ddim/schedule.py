"""Noise schedules and timestep sub-sequences: the single source of truth for both.

Tables are float64 (as in the reference code) and cast to the model's dtype at use.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field

import torch

from ddim.errors import DDIMError

SKIP_TYPES = ("uniform", "quadratic")


class ScheduleError(DDIMError, ValueError):
    """A noise schedule or timestep sequence setting is out of range; the message names the setting and the fix."""


def make_betas(
    kind: str = "linear", num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
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
) -> torch.Tensor:
    """The increasing sub-sequence tau of {0..T-1} a sampler visits (in reverse), as an int64 tensor.

    uniform:   tau_i = floor(i * T / S), i = 0..S-1
    quadratic: tau_i = floor((sqrt(0.8 T) * i / (S - 1))^2), i = 0..S-1  (DDIM's CIFAR10 choice)
    custom:    the given list, which must be non-decreasing and inside [0, T-1].
    The quadratic rule repeats small timesteps for larger S (S=50 starts 0, 0, 1, ...); those steps are
    exact no-ops but still cost a network call, and are kept for faithful reproduction.
    """
    if custom is not None:
        seq = torch.as_tensor(list(custom), dtype=torch.int64)
        if seq.ndim != 1 or seq.numel() == 0:
            raise ScheduleError("A custom timestep sequence must be a non-empty list of integers.")
        if int(seq.min()) < 0 or int(seq.max()) >= num_timesteps:
            raise ScheduleError(f"Custom timesteps must lie in [0, {num_timesteps - 1}], got {seq.tolist()}.")
        if bool((seq[1:] < seq[:-1]).any()):
            raise ScheduleError(
                "Custom timesteps must be given in increasing order, e.g. [0, 250, 500, 750]."
            )
        return seq
    if steps is None or int(steps) != steps or steps < 1 or steps > num_timesteps:
        raise ScheduleError(
            f"sampler.steps must be an integer in [1, {num_timesteps}] (the number of diffusion steps T), "
            f"got {steps}."
        )
    steps = int(steps)
    if skip_type == "uniform":
        return torch.tensor([i * num_timesteps // steps for i in range(steps)], dtype=torch.int64)
    if skip_type == "quadratic":
        if steps == 1:
            return torch.zeros(1, dtype=torch.int64)
        # Float64 like numpy's linspace in the reference implementation, then truncate.
        grid = torch.linspace(0, math.sqrt(0.8 * num_timesteps), steps, dtype=torch.float64) ** 2
        return grid.to(torch.int64)
    raise ScheduleError(
        f"Unknown sampler.skip_type {skip_type!r}; choose one of {SKIP_TYPES} or pass custom timesteps."
    )
