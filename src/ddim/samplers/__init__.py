"""Generalized (DDIM) samplers: stateless functions of (eps_fn, x_T, timestep sequence, schedule, eta, generator)."""

from ddim.samplers.config import SamplerConfig
from ddim.samplers.figures import consistency, interpolate, progressive, slerp
from ddim.samplers.generalized import (
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

__all__ = [
    "VARIANCES",
    "SamplerConfig",
    "SamplerError",
    "Trajectory",
    "consistency",
    "encode",
    "generalized_step",
    "initial_noise",
    "interpolate",
    "noise_std",
    "per_sample_generators",
    "progressive",
    "reconstruct",
    "sample",
    "slerp",
]
