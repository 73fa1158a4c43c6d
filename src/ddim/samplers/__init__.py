"""Samplers as stateless functions of (eps_fn, x_T, timestep sequence, schedule, options, generator), each
with a frozen settings class registered by name in SAMPLERS:

base.py        what every sampler shares: Sampler (settings base + registry), Step and the per-step callback,
               timestep batches, per-sample noise
ddim.py        the generalized (DDIM) family of eq. 12 (ddim, and ddpm / ddpm_sigma_hat as its presets), encode
dpm_solver.py  DPM-Solver++(2M/3M), SDE-DPM-Solver++, singlestep DPM-Solver
unipc.py       UniPC;  karras.py: Euler, Euler-ancestral, Heun;  pndm.py: PNDM
levels.py      the noise-level path the fast solvers share, and PathSampler (final_step)
figures.py     the papers' figures built on any sampler: interpolation, consistency, progressive, ...

Adding a sampler: a module with a Sampler subclass (a `name`, its settings as typed fields, `nfe`, `run`),
imported here or from a conf/sampler/<name>.yaml whose `_target_` names the class.
"""

from ddim.samplers.base import (
    SAMPLERS,
    Sampler,
    SamplerError,
    Step,
    initial_noise,
    make_sampler,
    per_sample_generators,
)
from ddim.samplers.ddim import DDIM, encode, generalized_step, noise_std, reconstruct, sample
from ddim.samplers.dpm_solver import DPMSolver, DPMSolverPP, SDEDPMSolverPP
from ddim.samplers.figures import (
    consistency,
    denoise_from,
    interpolate,
    progressive,
    progressive_frames,
    shared_latents,
    slerp,
)
from ddim.samplers.karras import Euler, EulerAncestral, Heun
from ddim.samplers.pndm import PNDM
from ddim.samplers.unipc import UniPC

__all__ = [
    "DDIM",
    "PNDM",
    "SAMPLERS",
    "DPMSolver",
    "DPMSolverPP",
    "Euler",
    "EulerAncestral",
    "Heun",
    "SDEDPMSolverPP",
    "Sampler",
    "SamplerError",
    "Step",
    "UniPC",
    "consistency",
    "denoise_from",
    "encode",
    "generalized_step",
    "initial_noise",
    "interpolate",
    "make_sampler",
    "noise_std",
    "per_sample_generators",
    "progressive",
    "progressive_frames",
    "reconstruct",
    "sample",
    "shared_latents",
    "slerp",
]
