"""The papers' figures built on the sampler loop: latent interpolation (DDIM Fig. 6), consistency over S
(DDIM Fig. 5), progressive x0_hat (DDPM Fig. 6), and DDPM's progressive decompression (Sec. 4.3): x0_hat
predicted from x_t ~ q(x_t | x_0) of a real image, and samples of p(x_0 | x_t) sharing one chain's x_t.

Every figure decodes with the Sampler it is given (any registered one; the per-step callback supplies the
x0_hat of progressive generation), so DDIM stays the default only where the paper used it. Each returns a
(rows, cols, C, H, W) tensor, rows = samples and cols = the varied quantity, which
`ddim.images.save_labeled_grid` lays out as given.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

from ddim.diffusion.forward import q_sample, x0_from_eps
from ddim.diffusion.schedule import Schedule
from ddim.samplers.base import EpsFn, Generators, Sampler, SamplerError, Step, increasing_sequence, t_batch
from ddim.samplers.ddim import sample


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical interpolation, row by row for batches (B, ...); a 1-D input is one vector.

    Gaussian latents concentrate on a sphere, so slerp keeps the interpolants typical where a linear mix
    would shrink their norm (the DDIM paper's choice for latent interpolation).
    """
    if z0.shape != z1.shape:
        raise SamplerError(f"slerp needs equal shapes, got {tuple(z0.shape)} and {tuple(z1.shape)}.")
    a = z0.reshape(1, -1) if z0.ndim == 1 else z0.reshape(z0.shape[0], -1)
    b = z1.reshape(1, -1) if z1.ndim == 1 else z1.reshape(z1.shape[0], -1)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1.0, 1.0)).unsqueeze(1)
    sin = torch.sin(theta)
    # Nearly parallel latents: slerp tends to the linear mix, which avoids dividing by ~0.
    small = sin.abs() < 1e-6
    w0 = torch.where(small, torch.full_like(theta, 1.0 - alpha), torch.sin((1.0 - alpha) * theta) / sin)
    w1 = torch.where(small, torch.full_like(theta, alpha), torch.sin(alpha * theta) / sin)
    return (w0 * a + w1 * b).reshape(z0.shape)


def interpolate(
    sampler: Sampler,
    eps_fn: EpsFn,
    z0: torch.Tensor,
    z1: torch.Tensor,
    n: int,
    schedule: Schedule,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Decode n slerp points between each pair of rows of z0 and z1 (B, C, H, W) -> (B, n, C, H, W) with the
    sampler (DDIM Fig. 6: DDIM, eta = 0)."""
    if n < 2:
        raise SamplerError(f"Interpolation needs n >= 2 points, got {n}.")
    alphas = torch.linspace(0.0, 1.0, n, dtype=torch.float64).tolist()
    z = torch.stack([slerp(z0, z1, a) for a in alphas], dim=1)
    flat = z.reshape(-1, *z0.shape[1:])
    chunks = flat.split(batch_size or flat.shape[0])
    out = torch.cat([sampler.run(eps_fn, c, schedule) for c in chunks])
    return out.reshape(z.shape)


def consistency(
    sampler: Sampler, eps_fn: EpsFn, x_T: torch.Tensor, steps_list: Sequence[int], schedule: Schedule
) -> torch.Tensor:
    """The same x_T decoded with the sampler at each S in steps_list -> (B, len(steps_list), C, H, W)."""
    if len(steps_list) == 0:
        raise SamplerError("consistency needs at least one number of steps, e.g. [10, 20, 50, 100].")
    return torch.stack(
        [
            dataclasses.replace(sampler, steps=s, timesteps=None, timesteps_file=None).run(
                eps_fn, x_T, schedule
            )
            for s in steps_list
        ],
        dim=1,
    )


def progressive(
    sampler: Sampler,
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    schedule: Schedule,
    every: int | Sequence[int] = 1,
    generator: Generators = None,
) -> torch.Tensor:
    """x0_hat along one chain of the sampler (DDPM's progressive generation) -> (B, K, C, H, W).

    every: an int k keeps steps 0, k, 2k, ... and the last step; a sequence keeps those step indices
    (0 = the first step, from the noisiest level). The last step's x0_hat is the final sample's estimate.
    """
    return progressive_frames(sampler, eps_fn, x_T, schedule, every, generator)[0]


def progressive_frames(
    sampler: Sampler,
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    schedule: Schedule,
    every: int | Sequence[int] = 1,
    generator: Generators = None,
) -> tuple[torch.Tensor, list[int]]:
    """progressive(...) and the timestep the network saw at each kept frame (what a figure's columns show)."""
    frames: dict[int, tuple[int, torch.Tensor]] = {}
    sampler.run(
        eps_fn,
        x_T,
        schedule,
        generator,
        callback=lambda step: frames.__setitem__(step.i, (step.t, step.x0_hat)),
    )
    n_steps = len(frames)
    if isinstance(every, int):
        if every < 1:
            raise SamplerError(f"progressive: every must be >= 1, got {every}.")
        keep = sorted(set(range(0, n_steps, every)) | {n_steps - 1})
    else:
        keep = sorted(set(int(k) for k in every))
        if not keep or keep[0] < 0 or keep[-1] >= n_steps:
            raise SamplerError(
                f"progressive: step indices must lie in [0, {n_steps - 1}], got {list(every)}."
            )
    return torch.stack([frames[k][1] for k in keep], dim=1), [frames[k][0] for k in keep]


def denoise_from(
    eps_fn: EpsFn,
    x0: torch.Tensor,
    timesteps: Sequence[int],
    schedule: Schedule,
    noise: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t = q_sample(x0, t, noise) and the network's x0_hat(x_t, t) for each t -> two (B, K, C, H, W).

    One noise draw per image (noise has x0's shape) for every t, so the columns differ only by how much of
    the image the forward process has destroyed: what a receiver of x_t could reconstruct (DDPM Sec. 4.3).
    """
    T = schedule.num_timesteps
    if not timesteps or any(not 0 <= int(t) < T for t in timesteps):
        raise SamplerError(f"denoise_from: timesteps must lie in [0, {T - 1}], got {list(timesteps)}.")
    table = schedule.alphas_cumprod
    x_ts, x0_hats = [], []
    for t in timesteps:
        ts = t_batch(int(t), x0)
        x_t = q_sample(x0, ts, noise, table)
        eps = eps_fn(x_t, ts).to(x0.dtype)
        a_t = float(table[int(t)])
        x_ts.append(x_t)
        x0_hats.append(x0_from_eps(x_t, eps, math.sqrt(a_t), math.sqrt(1.0 - a_t)))
    return torch.stack(x_ts, dim=1), torch.stack(x0_hats, dim=1)


def shared_latents(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    timesteps: torch.Tensor | Sequence[int],
    schedule: Schedule,
    stops: Sequence[int],
    generator: Generators,
    continuation_generators: Sequence[Sequence[torch.Generator]],
    eta: float = 1.0,
    variance: str = "eta",
    clip_x0: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One chain from x_T (a batch of 1) stopped at each timestep in `stops`, and from there n continuations
    to x_0, continuation c of stop k drawing its noise from continuation_generators[k][c] (DDPM Fig. 7/10:
    samples of p(x_0 | x_t) that share x_t; the later the stop, the more they share).

    stops must be members of the sub-sequence `timesteps`. Returns (x_t of each stop: (K, C, H, W),
    samples: (K, n, C, H, W)). The chain and the continuations take the same steps, so a continuation from
    the chain's own noise would reproduce the chain's sample.
    """
    if x_T.shape[0] != 1:
        raise SamplerError(f"shared_latents follows one chain: x_T must be a batch of 1, got {x_T.shape[0]}.")
    seq = increasing_sequence(timesteps, schedule)
    wanted = [int(t) for t in stops]
    if not wanted or any(t not in seq for t in wanted):
        raise SamplerError(f"shared_latents: stops must be timesteps of the sequence {seq}, got {wanted}.")
    if len(continuation_generators) != len(wanted):
        raise SamplerError(
            f"shared_latents: one list of generators per stop, got {len(continuation_generators)} for "
            f"{len(wanted)} stops."
        )
    states = {seq[-1]: x_T}  # the chain's state at each timestep it reaches

    def keep(step: Step) -> None:
        if step.t_next in wanted:
            states[step.t_next] = step.x

    chain = [t for t in seq if t >= min(wanted)]  # no network call below the lowest stop
    sample(eps_fn, x_T, chain, schedule, eta, variance, clip_x0, generator, callback=keep)
    x_ts, samples = [], []
    for t, gens in zip(wanted, continuation_generators, strict=True):
        start = states[t].expand(len(gens), *x_T.shape[1:]).clone()
        rest = seq[: seq.index(t) + 1]
        samples.append(sample(eps_fn, start, rest, schedule, eta, variance, clip_x0, list(gens)))
        x_ts.append(states[t][0])
    return torch.stack(x_ts), torch.stack(samples)
