"""Samplers as stateless functions of (eps_fn, x_T, timestep sequence, schedule, options, generator): the generalized
(DDIM) family and the fast solvers (DPM-Solver(++), UniPC, Heun/Euler, PNDM); SamplerConfig picks one by name."""

from ddim.samplers.config import SAMPLERS, SamplerConfig
from ddim.samplers.ddim import (
    VARIANCES,
    SamplerError,
    Trajectory,
    encode,
    generalized_step,
    initial_noise,
    noise_std,
    per_sample_generators,
    reconstruct,
    sample,
)
from ddim.samplers.dpm_solver import dpm_solver_multistep, dpm_solver_singlestep
from ddim.samplers.figures import consistency, denoise_from, interpolate, progressive, shared_latents, slerp
from ddim.samplers.karras import euler, euler_ancestral, heun
from ddim.samplers.pndm import pndm
from ddim.samplers.unipc import unipc

__all__ = [
    "SAMPLERS",
    "dpm_solver_multistep",
    "dpm_solver_singlestep",
    "euler",
    "euler_ancestral",
    "heun",
    "pndm",
    "unipc",
    "VARIANCES",
    "SamplerConfig",
    "SamplerError",
    "Trajectory",
    "consistency",
    "denoise_from",
    "encode",
    "generalized_step",
    "initial_noise",
    "interpolate",
    "noise_std",
    "per_sample_generators",
    "progressive",
    "reconstruct",
    "sample",
    "shared_latents",
    "slerp",
]
