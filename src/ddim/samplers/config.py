"""The sampler settings a user chooses (Hydra group conf/sampler), validated before any network call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ddim.samplers.generalized import (
    EpsFn,
    Generators,
    SamplerError,
    Trajectory,
    check_eta,
    check_variance,
    sample,
)
from ddim.schedule import SKIP_TYPES, Schedule, timestep_sequence


@dataclass
class SamplerConfig:
    """eta: 0 = DDIM, 1 = DDPM on the sub-sequence; steps: S; skip_type: uniform | quadratic;
    variance: eta | sigma_hat; clip_x0: clip x0_hat to [-1, 1]; timesteps: an explicit increasing list
    that replaces steps/skip_type."""

    eta: float = 0.0
    steps: int = 100
    skip_type: str = "uniform"
    variance: str = "eta"
    clip_x0: bool = False
    timesteps: Sequence[int] | None = None

    def __post_init__(self) -> None:
        # Hydra hands over ListConfig; keep plain values so the config is hashable and serialisable.
        if self.timesteps is not None:
            self.timesteps = [int(t) for t in self.timesteps]
        if isinstance(self.eta, int) and not isinstance(self.eta, bool):
            self.eta = float(self.eta)  # `sampler.eta=0` arrives as an int

    def validate(self, num_timesteps: int) -> SamplerConfig:
        """Raise one clear SamplerError or ScheduleError (both DDIMError, ValueError) for any bad field; returns self."""
        check_eta(self.eta)
        check_variance(self.variance)
        if not isinstance(self.clip_x0, bool):
            raise SamplerError(f"sampler.clip_x0 must be true or false, got {self.clip_x0!r}.")
        if self.timesteps is None and self.skip_type not in SKIP_TYPES:
            raise SamplerError(
                f"Unknown sampler.skip_type {self.skip_type!r}; choose one of {SKIP_TYPES} "
                "or give sampler.timesteps=[...]."
            )
        self.timestep_sequence(num_timesteps)
        return self

    def timestep_sequence(self, num_timesteps: int) -> torch.Tensor:
        """The increasing sub-sequence tau this config visits (in reverse)."""
        return timestep_sequence(self.steps, self.skip_type, num_timesteps, self.timesteps)

    def nfe(self, num_timesteps: int) -> int:
        """Network evaluations per sample (equals S; quadratic sequences may repeat timesteps)."""
        return int(self.timestep_sequence(num_timesteps).numel())

    def tag(self) -> str:
        """A short name for directories and table rows, e.g. 'eta0_S100_uniform' or 'sigma_hat_S1000_uniform_clip'."""
        head = "sigma_hat" if self.variance == "sigma_hat" else f"eta{float(self.eta):g}"
        clip = "_clip" if self.clip_x0 else ""
        if self.timesteps is not None:
            return f"{head}_custom{len(self.timesteps)}{clip}"
        return f"{head}_S{self.steps}_{self.skip_type}{clip}"

    def to_dict(self) -> dict:
        return asdict(self)

    def run(
        self,
        eps_fn: EpsFn,
        x_T: torch.Tensor,
        schedule: Schedule,
        generator: Generators = None,
        return_trajectory: bool = False,
    ) -> torch.Tensor | Trajectory:
        """Sample from x_T with these settings (see ddim.samplers.sample)."""
        self.validate(schedule.num_timesteps)
        return sample(
            eps_fn,
            x_T,
            self.timestep_sequence(schedule.num_timesteps),
            schedule,
            eta=float(self.eta),
            variance=self.variance,
            clip_x0=self.clip_x0,
            generator=generator,
            return_trajectory=return_trajectory,
        )
