"""The sampler settings a user chooses (Hydra group conf/sampler), validated before any network call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ddim.diffusion.schedule import SKIP_TYPES, TABLE_SKIP_TYPES, Schedule, timestep_sequence
from ddim.samplers.ddim import (
    EpsFn,
    Generators,
    SamplerError,
    Trajectory,
    check_eta,
    check_variance,
    sample,
)
from ddim.samplers.dpm_solver import check_dpm_options, dpm_solver_multistep, dpm_solver_singlestep
from ddim.samplers.karras import euler, euler_ancestral, heun
from ddim.samplers.levels import check_final_step, num_steps
from ddim.samplers.pndm import check_warm_start, pndm, pndm_nfe
from ddim.samplers.unipc import check_unipc_options, unipc

# name -> (takes sampler.order, uses sampler.lower_order_final, draws noise)
SAMPLERS = {
    "ddim": (False, False, True),  # noise when eta > 0 or variance=sigma_hat
    "dpm_solver_pp": (True, True, False),
    "sde_dpm_solver_pp": (True, True, True),
    "dpm_solver": (True, True, False),
    "unipc": (True, True, False),
    "heun": (False, False, False),
    "euler": (False, False, False),
    "euler_ancestral": (False, False, True),
    "pndm": (False, False, False),
}
_ORDERED = tuple(name for name, (takes_order, _, _) in SAMPLERS.items() if takes_order)
# option -> the samplers that read it. Any other sampler refuses a value that differs from the default,
# so that e.g. `sampler=heun sampler.order=3` is not silently a plain Heun run.
OPTION_USERS = {
    "eta": ("ddim", "euler_ancestral"),
    "variance": ("ddim",),
    "clip_x0": ("ddim",),
    "order": _ORDERED,
    "solver_type": ("dpm_solver_pp", "sde_dpm_solver_pp", "dpm_solver"),
    "variant": ("unipc",),
    "corrector": ("unipc",),
    "warm_start": ("pndm",),
    "lower_order_final": tuple(name for name, (_, uses_lof, _) in SAMPLERS.items() if uses_lof),
    "final_step": tuple(name for name in SAMPLERS if name != "ddim"),
}


@dataclass
class SamplerConfig:
    """name: which sampler (see SAMPLERS; ddim is the generalized family of eq. 12).
    ddim: eta: 0 = DDIM, 1 = DDPM on the sub-sequence; variance: eta | sigma_hat; clip_x0: clip x0_hat to
    [-1, 1]. euler_ancestral: eta scales its noise (1 = DDPM's posterior variance).
    steps: S; skip_type: one of ddim.diffusion.schedule.SKIP_TYPES; timesteps: an explicit increasing list that
    replaces steps/skip_type.
    Fast solvers: order (1-3; dpm_solver_pp, sde_dpm_solver_pp <= 2, dpm_solver, unipc); solver_type:
    midpoint | heun (DPM-Solver's second-order weight); variant: bh1 | bh2 (UniPC); corrector (UniPC);
    warm_start: prk | plms (PNDM); lower_order_final: lower orders on the last steps; final_step:
    denoise (the last call maps to x0) | none (stop at the smallest timestep, one call fewer)."""

    eta: float = 0.0
    steps: int = 100
    skip_type: str = "uniform"
    variance: str = "eta"
    clip_x0: bool = False
    timesteps: Sequence[int] | None = None
    name: str = "ddim"
    order: int = 2
    solver_type: str = "midpoint"
    variant: str = "bh2"
    corrector: bool = True
    warm_start: str = "prk"
    lower_order_final: bool = True
    final_step: str = "denoise"

    def __post_init__(self) -> None:
        # Hydra hands over ListConfig; keep plain values so the config is hashable and serialisable.
        if self.timesteps is not None:
            self.timesteps = [int(t) for t in self.timesteps]
        if isinstance(self.eta, int) and not isinstance(self.eta, bool):
            self.eta = float(self.eta)  # `sampler.eta=0` arrives as an int

    def validate(self, schedule: Schedule | int) -> SamplerConfig:
        """Raise one clear SamplerError or ScheduleError (both DDIMError, ValueError) for any bad field; returns self.

        schedule: the Schedule, or only its length T (enough for all but the sequence of logsnr/karras)."""
        if self.name not in SAMPLERS:
            raise SamplerError(f"Unknown sampler.name {self.name!r}; choose one of {tuple(SAMPLERS)}.")
        T = schedule.num_timesteps if isinstance(schedule, Schedule) else int(schedule)
        if self.timesteps is None and (
            isinstance(self.steps, bool) or not isinstance(self.steps, (int, float))
        ):
            raise SamplerError(f"sampler.steps must be an integer in [1, {T}], got {self.steps!r}.")
        check_eta(self.eta)
        check_variance(self.variance)
        for key in ("clip_x0", "corrector", "lower_order_final"):
            if not isinstance(getattr(self, key), bool):
                raise SamplerError(f"sampler.{key} must be true or false, got {getattr(self, key)!r}.")
        if self.name == "ddim" and self.final_step != "denoise":
            raise SamplerError(
                "sampler=ddim always ends with the step to a = 1 (final_step=denoise); "
                "sampler=euler is the same ODE step and takes final_step=none."
            )
        self._check_options_apply()
        check_dpm_options(self.order, self.solver_type, sde=self.name == "sde_dpm_solver_pp")
        check_unipc_options(self.order, self.variant)
        check_warm_start(self.warm_start)
        check_final_step(self.final_step)
        if self.timesteps is None and self.skip_type not in SKIP_TYPES:
            raise SamplerError(
                f"Unknown sampler.skip_type {self.skip_type!r}; choose one of {SKIP_TYPES} "
                "or give sampler.timesteps=[...]."
            )
        if self._needs_table(schedule):
            timestep_sequence(self.steps, "uniform", schedule)  # the range of steps
        else:
            num_steps(self.timestep_sequence(schedule), schedule, "denoise")
        if self.final_step == "none" and self._distinct(schedule) < 2:
            raise SamplerError(
                "sampler.final_step=none needs at least two distinct timesteps; use more steps or final_step=denoise."
            )
        return self

    def _check_options_apply(self) -> None:
        defaults = SamplerConfig()
        for key, users in OPTION_USERS.items():
            if self.name not in users and getattr(self, key) != getattr(defaults, key):
                raise SamplerError(
                    f"sampler.{key} does not apply to sampler={self.name}; it is used by: {', '.join(users)} "
                    f"(leave it at {getattr(defaults, key)!r})."
                )

    def _needs_table(self, schedule: Schedule | int) -> bool:
        return (
            self.timesteps is None
            and self.skip_type in TABLE_SKIP_TYPES
            and not isinstance(schedule, Schedule)
        )

    def timestep_sequence(self, schedule: Schedule | int) -> torch.Tensor:
        """The increasing sub-sequence tau this config visits (in reverse)."""
        if self._needs_table(schedule):
            raise SamplerError(
                f"sampler.skip_type={self.skip_type} is defined on the noise levels: pass the Schedule, not its length."
            )
        table = schedule.alphas_cumprod if isinstance(schedule, Schedule) else None
        T = schedule.num_timesteps if isinstance(schedule, Schedule) else int(schedule)
        return timestep_sequence(self.steps, self.skip_type, T, self.timesteps, table)

    def _distinct(self, schedule: Schedule | int) -> int:
        # logsnr/karras sequences are distinct by construction, so their length needs no table.
        if self._needs_table(schedule):
            return int(self.steps)
        return len(set(self.timestep_sequence(schedule).tolist()))

    def nfe(self, schedule: Schedule | int) -> int:
        """Network evaluations per sample actually made: S for ddim (quadratic sequences may repeat
        timesteps, each still a call); for the solvers, per step of their path (distinct timesteps, one
        fewer with final_step=none): 1, Heun 2 (1 on the step to x0), PNDM's warm-up 4 (prk) or 2 (plms)."""
        if self.name == "ddim":
            return (
                self._distinct(schedule)
                if self._needs_table(schedule)
                else len(self.timestep_sequence(schedule))
            )
        n = self._distinct(schedule) - (self.final_step == "none")
        if self.name == "heun":
            return 2 * n - (self.final_step == "denoise")
        if self.name == "pndm":
            return pndm_nfe(n, self.warm_start)
        return n

    @property
    def stochastic(self) -> bool:
        if self.name == "ddim":
            return self.eta > 0 or self.variance == "sigma_hat"
        if self.name == "euler_ancestral":
            return self.eta > 0
        return SAMPLERS[self.name][2]

    def tag(self) -> str:
        """A short name for directories and table rows, e.g. 'eta0_S100_uniform', 'sigma_hat_S1000_uniform_clip'
        or 'dpm_solver_pp2_S10_logsnr'."""
        head, spacing, extras = self._name_parts()
        span = spacing if self.timesteps is not None else f"S{self.steps}_{spacing}"
        return "_".join([head, span, *extras])

    def label(self) -> str:
        """The tag without the number of steps: one row of a quality-per-NFE table, e.g. 'unipc2_logsnr'."""
        head, spacing, extras = self._name_parts()
        return "_".join([head, spacing, *extras])

    def _name_parts(self) -> tuple[str, str, list[str]]:
        spacing = f"custom{len(self.timesteps)}" if self.timesteps is not None else self.skip_type
        if self.name == "ddim":
            head = "sigma_hat" if self.variance == "sigma_hat" else f"eta{float(self.eta):g}"
            return head, spacing, ["clip"] * self.clip_x0
        takes_order, uses_lof, _ = SAMPLERS[self.name]
        extras = []
        if (
            self.name in ("dpm_solver_pp", "sde_dpm_solver_pp", "dpm_solver")
            and self.solver_type != "midpoint"
        ):
            extras.append(self.solver_type)
        if self.name == "unipc":
            extras += [self.variant] * (self.variant != "bh2") + ["nocorrector"] * (not self.corrector)
        if self.name == "pndm" and self.warm_start != "prk":
            extras.append(self.warm_start)
        if self.name == "euler_ancestral" and self.eta != 1.0:
            extras.append(f"eta{float(self.eta):g}")
        if uses_lof and not self.lower_order_final:
            extras.append("nolof")
        if self.final_step != "denoise":
            extras.append("nodenoise")
        return f"{self.name}{self.order if takes_order else ''}", spacing, extras

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
        """Sample from x_T with these settings (ddim: ddim.samplers.sample; the others: their modules)."""
        self.validate(schedule)
        seq = self.timestep_sequence(schedule)
        if self.name == "ddim":
            return sample(
                eps_fn,
                x_T,
                seq,
                schedule,
                eta=float(self.eta),
                variance=self.variance,
                clip_x0=self.clip_x0,
                generator=generator,
                return_trajectory=return_trajectory,
            )
        if return_trajectory:
            raise SamplerError(f"Trajectories are recorded by sampler=ddim only, not {self.name}.")
        common = dict(final_step=self.final_step)
        lof = dict(lower_order_final=self.lower_order_final, **common)
        if self.name in ("dpm_solver_pp", "sde_dpm_solver_pp"):
            sde = self.name == "sde_dpm_solver_pp"
            return dpm_solver_multistep(
                eps_fn,
                x_T,
                seq,
                schedule,
                self.order,
                True,
                sde,
                self.solver_type,
                generator=generator,
                **lof,
            )
        if self.name == "dpm_solver":
            return dpm_solver_singlestep(
                eps_fn, x_T, seq, schedule, self.order, False, self.solver_type, **lof
            )
        if self.name == "unipc":
            return unipc(eps_fn, x_T, seq, schedule, self.order, self.variant, self.corrector, **lof)
        if self.name == "heun":
            return heun(eps_fn, x_T, seq, schedule, **common)
        if self.name == "euler":
            return euler(eps_fn, x_T, seq, schedule, **common)
        if self.name == "euler_ancestral":
            return euler_ancestral(
                eps_fn, x_T, seq, schedule, generator=generator, eta=float(self.eta), **common
            )
        return pndm(eps_fn, x_T, seq, schedule, self.warm_start, **common)
