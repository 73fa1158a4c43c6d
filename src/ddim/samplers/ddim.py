"""The generalized (DDIM) sampler family of Song et al. 2021, eq. (12), as stateless functions.

A sampler is a loop over consecutive pairs (t, s) of a timestep sub-sequence tau, visited from the end:
(tau_{S-1}, tau_{S-2}), ..., (tau_0, -1), with a_{-1} = 1 so the last step returns x_0. All coefficients
are Python floats taken from the float64 schedule, so a step costs a handful of elementwise kernels and
never synchronises with the device.

Noise contract (what makes results reproducible): a step whose noise standard deviation is > 0 draws one
standard normal tensor of x's shape; steps with zero noise draw nothing. With one torch.Generator the draw
is `torch.randn(x.shape, generator=g)`; with a list of generators (one per sample) row i is drawn from
generator i, so sample i does not depend on the batch it is in. Draws happen on the generator's device and
are then moved to x's device (CPU generators give the same samples on any accelerator). This is the scheme
of diffusers' `randn_tensor`, which the tests rely on.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch

from ddim.diffusion.forward import predict_x0
from ddim.diffusion.schedule import Schedule, timestep_sequence
from ddim.errors import DDIMError

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Generators = torch.Generator | Sequence[torch.Generator] | None
VARIANCES = ("eta", "sigma_hat")
_SEED_STRIDE = 0x9E3779B9  # large and odd: nearby seeds get far-apart, non-overlapping seed ranges


class SamplerError(DDIMError, ValueError):
    """Bad sampler settings (eta, steps, variance, timesteps, generators); the message says what to do."""


class Trajectory(NamedTuple):
    """x0: the final sample; xs: [x_T, ..., x_0] (S + 1 tensors); x0_hats: the x0 estimate of each step (S)."""

    x0: torch.Tensor
    xs: list[torch.Tensor]
    x0_hats: list[torch.Tensor]


def check_eta(eta: float) -> float:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise SamplerError(f"sampler.eta must be a number >= 0 (0 = DDIM, 1 = DDPM), got {eta!r}.")
    return float(eta)


def check_variance(variance: str) -> str:
    if variance not in VARIANCES:
        raise SamplerError(
            f"Unknown sampler.variance {variance!r}; choose 'eta' (the eq. 12 family, noise set by sampler.eta) "
            "or 'sigma_hat' (DDPM with the larger variance 1 - a_t/a_s)."
        )
    return variance


def noise_std(a_t: float, a_s: float, eta: float, variance: str = "eta") -> float:
    """Standard deviation of the noise added on the step from t to s (0 means no draw)."""
    if variance == "sigma_hat":
        # No noise on the step that lands on x_0 (a_s = 1), as in DDPM.
        return math.sqrt(max(1.0 - a_t / a_s, 0.0)) if a_s < 1.0 else 0.0
    if eta == 0.0:
        return 0.0
    return eta * math.sqrt((1.0 - a_s) / (1.0 - a_t) * max(1.0 - a_t / a_s, 0.0))


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
    x0_hat = predict_x0(x_t, eps, a_t)
    if clip_x0:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
    std = noise_std(a_t, a_s, eta, variance)
    if variance == "eta":
        c_eps = 1.0 - a_s - std * std
        if c_eps < -1e-12:
            raise SamplerError(
                f"sampler.eta={eta} is too large for the step a_t={a_t:.6g} -> a_s={a_s:.6g} "
                "(1 - a_s - sigma^2 < 0); use eta <= 1."
            )
        x_s = torch.add(x0_hat * math.sqrt(a_s), eps, alpha=math.sqrt(max(c_eps, 0.0)))
    elif variance == "sigma_hat":
        beta = 1.0 - a_t / a_s
        c_x0 = math.sqrt(a_s) * beta / (1.0 - a_t)
        c_xt = math.sqrt(1.0 - beta) * (1.0 - a_s) / (1.0 - a_t)
        x_s = torch.add(x0_hat * c_x0, x_t, alpha=c_xt)
    else:
        check_variance(variance)
    if std > 0.0:
        if noise is None:
            raise SamplerError("This step adds noise (sigma > 0) but no noise tensor was given.")
        x_s = x_s.add_(noise, alpha=std)
    return x_s, x0_hat


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


def _as_generator_list(generator: Generators, batch: int) -> torch.Generator | list[torch.Generator] | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    generators = list(generator)
    if len(generators) != batch or not all(isinstance(g, torch.Generator) for g in generators):
        raise SamplerError(
            f"Pass one torch.Generator per sample: got {len(generators)} generators for a batch of {batch}."
        )
    return generators


def _randn(
    shape: Sequence[int], generator: Generators, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
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
    to `sample`, which continues each generator's stream for that sample's step noise)."""
    generator = _as_generator_list(generator, shape[0])
    return _randn(shape, generator, torch.device(device), dtype)


def _sequence(timesteps: torch.Tensor | Sequence[int], schedule: Schedule) -> list[int]:
    """The validated increasing sub-sequence as Python ints (one source of truth: timestep_sequence)."""
    if isinstance(timesteps, torch.Tensor):
        timesteps = timesteps.reshape(-1).tolist()
    return timestep_sequence(custom=list(timesteps), num_timesteps=schedule.num_timesteps).tolist()


def _pairs(timesteps: torch.Tensor | Sequence[int], schedule: Schedule) -> list[tuple[int, float, float]]:
    """(t, a_t, a_s) for each step in sampling order; a_s of the last step is a_{-1} = 1."""
    seq = _sequence(timesteps, schedule)
    table = schedule.alphas_cumprod.tolist()
    prev = [-1, *seq[:-1]]
    return [
        (t, table[t], table[s] if s >= 0 else 1.0) for t, s in zip(reversed(seq), reversed(prev), strict=True)
    ]


def _t_batch(t: int, x: torch.Tensor) -> torch.Tensor:
    # A fresh tensor per call: eps_fn may keep a reference to it.
    return torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)


def _steps(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    timesteps: torch.Tensor | Sequence[int],
    schedule: Schedule,
    eta: float,
    variance: str,
    clip_x0: bool,
    generator: Generators,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yields (x_s, x0_hat) after each step; everything is validated before the first network call."""
    eta = check_eta(eta)
    variance = check_variance(variance)
    pairs = _pairs(timesteps, schedule)
    generator = _as_generator_list(generator, x_T.shape[0])
    if variance == "eta":
        for _, a_t, a_s in pairs:
            std = noise_std(a_t, a_s, eta)
            if 1.0 - a_s - std * std < -1e-12:
                raise SamplerError(f"sampler.eta={eta} is too large for this schedule; use eta <= 1.")
    # A model with a learned variance (ddim.diffusion.parameterization.ModelFn) replaces sigma on the ancestral sampler.
    learned = getattr(eps_fn, "step_variance", None) if variance == "eta" and eta == 1.0 else None
    x = x_T
    for t, a_t, a_s in pairs:
        log_var = None
        if learned is None:
            eps = eps_fn(x, _t_batch(t, x)).to(x.dtype)
        else:
            eps, log_var = learned(x, _t_batch(t, x), a_t, a_s)
            eps = eps.to(x.dtype)
        std = noise_std(a_t, a_s, eta, variance)
        noise = _randn(x.shape, generator, x.device, x.dtype) if std > 0.0 else None
        if noise is not None and log_var is not None:
            noise = noise * (0.5 * log_var.to(x.dtype)).exp() / std  # so the step adds N(0, exp(log_var))
        x, x0_hat = generalized_step(x, eps, a_t, a_s, eta, noise, clip_x0, variance)
        yield x, x0_hat


def sample(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    timesteps: torch.Tensor | Sequence[int],
    schedule: Schedule,
    eta: float = 0.0,
    variance: str = "eta",
    clip_x0: bool = False,
    generator: Generators = None,
    return_trajectory: bool = False,
) -> torch.Tensor | Trajectory:
    """Run the generalized sampler from x_T down the increasing sub-sequence `timesteps` (visited in reverse).

    eps_fn(x, t) gets t as an int64 tensor of shape [B]. Call it under torch.no_grad() for networks.
    eta = 0 is DDIM (deterministic), eta = 1 DDPM's posterior variance on the sub-sequence;
    variance="sigma_hat" (with clip_x0=True) is the last row of DDIM Table 1.
    """
    xs, x0_hats = [x_T], []
    x = x_T
    for x, x0_hat in _steps(eps_fn, x_T, timesteps, schedule, eta, variance, clip_x0, generator):
        if return_trajectory:
            xs.append(x)
            x0_hats.append(x0_hat)
    return Trajectory(x, xs, x0_hats) if return_trajectory else x


def encode(
    eps_fn: EpsFn,
    x0: torch.Tensor,
    timesteps: torch.Tensor | Sequence[int],
    schedule: Schedule,
    return_trajectory: bool = False,
) -> torch.Tensor | Trajectory:
    """Deterministic encoding x_0 -> x_T: the eta = 0 step run forward in time (Euler on the ODE, eq. 14).

    Each step goes from x_s to x_t (s before t in tau, s = -1 for x_0) with eps evaluated where the step
    starts, eps_theta(x_s, s), which makes it the explicit Euler step of the ODE in the paper's
    (sigma = sqrt(1 - a)/sqrt(a), x / sqrt(a)) variables. The first step starts at x_0 (a = 1), where the
    network is undefined; it uses eps_theta(x_0, tau_0), the nearest noise level the network knows
    (sqrt(1 - a_0) = 0.01 for DDPM's schedule). Other codes (diffusers' DDIMInverseScheduler,
    prompt-to-prompt) evaluate eps at the destination step (x_s, t) instead.
    In the returned trajectory, xs = [x_0, x_{tau_0}, ..., x_T] and x0_hats are the estimates used.
    """
    seq = _sequence(timesteps, schedule)
    table = schedule.alphas_cumprod.tolist()
    x = x0
    xs, x0_hats = [x0], []
    s = -1
    for t in seq:
        a_s = table[s] if s >= 0 else 1.0
        eps = eps_fn(x, _t_batch(s if s >= 0 else seq[0], x)).to(x.dtype)
        x, x0_hat = generalized_step(x, eps, a_s, table[t], 0.0, None)
        if return_trajectory:
            xs.append(x)
            x0_hats.append(x0_hat)
        s = t
    return Trajectory(x, xs, x0_hats) if return_trajectory else x


def reconstruct(
    eps_fn: EpsFn, x0: torch.Tensor, timesteps: torch.Tensor | Sequence[int], schedule: Schedule
) -> torch.Tensor:
    """decode(encode(x_0)) with eta = 0 on the same sub-sequence (DDIM Table 2)."""
    return sample(eps_fn, encode(eps_fn, x0, timesteps, schedule), timesteps, schedule, eta=0.0)
