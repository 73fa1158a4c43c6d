"""What every sampler shares: the Sampler settings base class (and the registry it fills), timestep batches,
per-sample noise, and the per-step callback.

A sampler is a frozen dataclass of only its own settings (typed and ranged through ddim.settings, checked
once when it is built) with a `run(model, x_T, schedule, generator=None, callback=None)` method that calls a
stateless function of its module. Subclasses register themselves by their `name` in SAMPLERS, so adding a
sampler is one module (a subclass) plus one conf/sampler/<name>.yaml naming the class as `_target_`.

Noise contract (what makes results reproducible): a step whose noise standard deviation is > 0 draws one
standard normal tensor of x's shape; steps with zero noise draw nothing. With one torch.Generator the draw
is `torch.randn(x.shape, generator=g)`; with a list of generators (one per sample) row i is drawn from
generator i, so sample i does not depend on the batch it is in. Draws happen on the generator's device and
are then moved to x's device (CPU generators give the same samples on any accelerator). This is the scheme
of diffusers' `randn_tensor`, which the tests rely on.
"""

from __future__ import annotations

import dataclasses
import importlib
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Literal, NamedTuple

import torch

from ddim.diffusion.schedule import SKIP_TYPES, Schedule, timestep_sequence
from ddim.errors import DDIMError
from ddim.samplers.timesteps_file import TimestepsFile, check_nfe, check_sampler, read_timesteps_file
from ddim.samplers.timesteps_file import check_schedule as check_file_schedule
from ddim.settings import Count, SettingsError, check

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None
SkipType = Literal[SKIP_TYPES]
FinalStep = Literal["denoise", "none"]
_SEED_STRIDE = 0x9E3779B9  # large and odd: nearby seeds get far-apart, non-overlapping seed ranges


class SamplerError(DDIMError, ValueError):
    """Bad sampler settings (eta, steps, variance, timesteps, generators); the message says what to do."""


class Step(NamedTuple):
    """What a sampler reports after each step (k-diffusion's callback, with discrete timesteps):
    i: the step's index (0 = the first, from the noisiest level); t: the timestep the network saw;
    t_next: where x now is (-1 = the clean end); x: the state after the step; x0_hat: the step's estimate
    of the clean image."""

    i: int
    t: int
    t_next: int
    x: torch.Tensor
    x0_hat: torch.Tensor


Callback = Callable[[Step], None] | None


# ----------------------------------------------------------------------------------------------------------
# The settings base class and the registry


SAMPLERS: dict[str, type[Sampler]] = {}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sampler:
    """steps: S; skip_type: the rule that picks S timesteps (ddim.diffusion.schedule.timestep_sequence);
    timesteps: an explicit increasing list that replaces steps and skip_type; timesteps_file: a sequence
    task=optimize_timesteps searched for this sampler (ddim.samplers.timesteps_file), which replaces them too."""

    name: ClassVar[str] = ""
    stochastic: ClassVar[bool] = False
    steps: Count = 100
    skip_type: SkipType = "uniform"
    timesteps: tuple[int, ...] | None = None
    timesteps_file: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            SAMPLERS[cls.name] = cls

    def __post_init__(self) -> None:
        if self.timesteps is not None and not isinstance(self.timesteps, tuple):
            # Hydra hands over ListConfig: keep plain values so the settings are hashable and serialisable.
            object.__setattr__(self, "timesteps", tuple(self.timesteps))
        check(type(self), self.settings(), "sampler", f"sampler={self.name}")
        object.__setattr__(self, "_file", None)
        if self.timesteps_file is not None:
            if self.timesteps is not None:
                raise SamplerError(
                    "sampler.timesteps and sampler.timesteps_file both give the sequence; set only one."
                )
            record = read_timesteps_file(str(self.timesteps_file))
            check_sampler(record, self.name, self.settings())
            object.__setattr__(self, "_file", record)  # loaded once, when the sampler is built

    @property
    def file_record(self) -> TimestepsFile | None:
        """The loaded timesteps file (None without one)."""
        return self._file  # type: ignore[attr-defined]

    def settings(self) -> dict[str, Any]:
        """The settings as plain values (list for timesteps), what metrics.json and manifests record."""
        values = dataclasses.asdict(self)
        if values["timesteps"] is not None:
            values["timesteps"] = list(values["timesteps"])
        return values

    # -- the timesteps -------------------------------------------------------------------------------------

    def sequence(self, schedule: Schedule) -> list[int]:
        """The increasing sub-sequence tau this sampler visits (in reverse)."""
        T = schedule.num_timesteps
        if self.file_record is not None:
            check_file_schedule(self.file_record, schedule)
            return list(self.file_record.timesteps)
        if self.timesteps is not None:
            return timestep_sequence(custom=list(self.timesteps), num_timesteps=T).tolist()
        return timestep_sequence(
            self.steps, self.skip_type, T, alphas_cumprod=schedule.alphas_cumprod
        ).tolist()

    def check_schedule(self, schedule: Schedule) -> Sampler:
        """The checks that need the schedule (steps <= T, the sequence itself, a timesteps file's schedule and
        NFE); once, before any network call. Subclasses add theirs after calling this."""
        self.sequence(schedule)
        if self.file_record is not None:
            check_nfe(self.file_record, self.nfe(schedule))
        return self

    def nfe(self, schedule: Schedule) -> int:
        """Network evaluations per sample actually made."""
        raise NotImplementedError

    # -- names for folders and tables ----------------------------------------------------------------------

    def head(self) -> str:
        """The sampler part of a label, e.g. 'dpm_solver_pp2' or 'eta0'."""
        return self.name

    def extras(self) -> list[str]:
        """Label parts for settings that differ from the sampler's usual ones (e.g. 'nodenoise')."""
        return []

    def spacing(self) -> str:
        if self.file_record is not None:
            return "optimized"
        return f"custom{len(self.timesteps)}" if self.timesteps is not None else self.skip_type

    def tag(self) -> str:
        """A short name for directories and table rows, e.g. 'eta0_S100_uniform' or 'dpm_solver_pp2_S10_logsnr'."""
        steps = len(self.file_record.timesteps) if self.file_record is not None else self.steps
        span = self.spacing() if self.timesteps is not None else f"S{steps}_{self.spacing()}"
        return "_".join([self.head(), span, *self.extras()])

    def label(self) -> str:
        """The tag without the number of steps: one row of a quality-per-NFE table, e.g. 'unipc2_logsnr'."""
        return "_".join([self.head(), self.spacing(), *self.extras()])

    # -- sampling ------------------------------------------------------------------------------------------

    def run(
        self,
        model: EpsFn,
        x_T: torch.Tensor,
        schedule: Schedule,
        generator: Generators = None,
        callback: Callback = None,
    ) -> torch.Tensor:
        """Sample from x_T; callback(Step) after each step. Call under torch.no_grad() for networks."""
        raise NotImplementedError


def make_sampler(name: str, **settings: Any) -> Sampler:
    """A registered sampler by name, e.g. make_sampler("dpm_solver_pp", steps=10)."""
    if name not in SAMPLERS:
        raise SamplerError(f"Unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}.")
    return build(SAMPLERS[name], settings)


def build(cls: type[Sampler], settings: Mapping[str, Any], path: str = "sampler") -> Sampler:
    """cls(**settings), every setting checked with its full key path (e.g. callbacks.sample_grid.sampler)."""
    if "name" in settings:
        raise SettingsError(
            f"{path}.name={settings['name']}: a sampler is chosen by its config, e.g. sampler={settings['name']} "
            f"(one of {', '.join(SAMPLERS)}), not by {path}.name."
        )
    check(cls, settings, path, f"{path}={cls.name}", required=False)
    return cls(**settings)


def sampler_from_settings(node: Mapping[str, Any], path: str = "sampler") -> Sampler:
    """The sampler a config node describes: `_target_` names its class (conf/sampler/<name>.yaml), the other
    keys are its settings."""
    values = dict(node)
    target = values.pop("_target_", None)
    if target is None:
        hint = f" (sampler={values['name']})" if "name" in values else ""
        raise SettingsError(
            f"{path} names no sampler class: choose one with sampler=NAME{hint}, one of "
            f"{', '.join(SAMPLERS)} (conf/sampler/NAME.yaml sets {path}._target_)."
        )
    module, _, attribute = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, ValueError) as err:
        raise SettingsError(f"{path}._target_={target} cannot be imported ({err}).") from None
    if not (isinstance(cls, type) and issubclass(cls, Sampler)):
        raise SettingsError(
            f"{path}._target_={target} is not a Sampler subclass (ddim.samplers.base.Sampler)."
        )
    return build(cls, values, path)


# ----------------------------------------------------------------------------------------------------------
# Timestep batches and noise


def t_batch(t: int, x: torch.Tensor) -> torch.Tensor:
    """The timestep t for every row of x, as the network takes it. A fresh tensor per call: a model may keep
    a reference to it."""
    return torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)


def increasing_sequence(timesteps: torch.Tensor | Sequence[int], schedule: Schedule) -> list[int]:
    """A validated increasing sub-sequence as Python ints (one source of truth: timestep_sequence)."""
    if isinstance(timesteps, torch.Tensor):
        timesteps = timesteps.reshape(-1).tolist()
    return timestep_sequence(custom=list(timesteps), num_timesteps=schedule.num_timesteps).tolist()


def per_sample_generators(
    seed: int, indices: Sequence[int] | range, device: str | torch.device = "cpu"
) -> list[torch.Generator]:
    """One generator per global sample index, so sample i is the same for any batch size, GPU count or resume.

    Generator i is seeded with (seed * 0x9E3779B9 + i) mod 2**32: PyTorch's CPU generator keeps only the low
    32 bits of a seed, and this map is one-to-one in i for a given seed (seed 0 gives manual_seed(i));
    different seeds shift the streams by a large odd constant.
    """
    try:
        seed = operator.index(seed)
    except TypeError:
        seed = -1
    if seed < 0:
        raise SamplerError(f"seed must be a non-negative integer, got {seed!r}.")
    return [
        torch.Generator(device=device).manual_seed((seed * _SEED_STRIDE + int(i)) % 2**32) for i in indices
    ]


def as_generator_list(generator: Generators, batch: int) -> torch.Generator | list[torch.Generator] | None:
    """None, one generator, or a checked list of one generator per sample."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    generators = list(generator)
    if len(generators) != batch or not all(isinstance(g, torch.Generator) for g in generators):
        raise SamplerError(
            f"Pass one torch.Generator per sample: got {len(generators)} generators for a batch of {batch}."
        )
    return generators


def randn(
    shape: Sequence[int], generator: Generators, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Standard normal noise under the noise contract above."""
    # Draw in the sampler's dtype when it is a full-precision one, so float64 runs stay exact.
    draw_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    shape = tuple(shape)
    if generator is None:
        return torch.randn(shape, device=device, dtype=draw_dtype).to(dtype)
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=generator.device, dtype=draw_dtype).to(
            device, dtype
        )
    rows = [torch.randn((1, *shape[1:]), generator=g, device=g.device, dtype=draw_dtype) for g in generator]
    return torch.cat(rows).to(device, dtype)  # one transfer per step, not one per sample


def initial_noise(
    shape: Sequence[int],
    generator: Generators = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """x_T ~ N(0, I); with a list of generators row i comes from generator i (then keep passing the same list
    to the sampler, which continues each generator's stream for that sample's step noise)."""
    generator = as_generator_list(generator, shape[0])
    return randn(shape, generator, torch.device(device), dtype)
