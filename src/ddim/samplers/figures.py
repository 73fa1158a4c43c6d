"""The papers' figures built on the sampler loop: latent interpolation (DDIM Fig. 6), consistency over S
(DDIM Fig. 5) and progressive x0_hat (DDPM Fig. 6).

Each returns a (rows, cols, C, H, W) tensor, rows = samples and cols = the varied quantity, which
`ddim.images.save_grid` lays out as given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ddim.samplers.generalized import EpsFn, Generators, SamplerError, _sequence, _steps, sample
from ddim.schedule import Schedule, timestep_sequence


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
    eps_fn: EpsFn,
    z0: torch.Tensor,
    z1: torch.Tensor,
    n: int,
    timesteps: torch.Tensor | Sequence[int],
    schedule: Schedule,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Decode (eta = 0) n slerp points between each pair of rows of z0 and z1 (B, C, H, W) -> (B, n, C, H, W)."""
    if n < 2:
        raise SamplerError(f"Interpolation needs n >= 2 points, got {n}.")
    alphas = torch.linspace(0.0, 1.0, n, dtype=torch.float64).tolist()
    z = torch.stack([slerp(z0, z1, a) for a in alphas], dim=1)
    flat = z.reshape(-1, *z0.shape[1:])
    chunks = flat.split(batch_size or flat.shape[0])
    out = torch.cat([sample(eps_fn, c, timesteps, schedule, eta=0.0) for c in chunks])
    return out.reshape(z.shape)


def consistency(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    steps_list: Sequence[int],
    skip_type: str,
    schedule: Schedule,
) -> torch.Tensor:
    """The same x_T decoded deterministically with each S in steps_list -> (B, len(steps_list), C, H, W)."""
    if len(steps_list) == 0:
        raise SamplerError("consistency needs at least one number of steps, e.g. [10, 20, 50, 100].")
    table = schedule.alphas_cumprod  # logsnr/karras sequences are defined on the noise levels
    seqs = [timestep_sequence(s, skip_type, schedule.num_timesteps, alphas_cumprod=table) for s in steps_list]
    return torch.stack([sample(eps_fn, x_T, seq, schedule, eta=0.0) for seq in seqs], dim=1)


def progressive(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    timesteps: torch.Tensor | Sequence[int],
    schedule: Schedule,
    every: int | Sequence[int] = 1,
    eta: float = 0.0,
    variance: str = "eta",
    clip_x0: bool = False,
    generator: Generators = None,
) -> torch.Tensor:
    """x0_hat along one chain (DDPM's progressive generation) -> (B, K, C, H, W).

    every: an int k keeps steps 0, k, 2k, ... and the last step; a sequence keeps those step indices
    (0 = the first step, from tau_{S-1}). The last step's x0_hat is the final sample.
    """
    n_steps = len(_sequence(timesteps, schedule))
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
    wanted = set(keep)
    frames = []
    steps = _steps(eps_fn, x_T, timesteps, schedule, eta, variance, clip_x0, generator)
    for k, (_, x0_hat) in enumerate(steps):
        if k in wanted:
            frames.append(x0_hat)
        if k == keep[-1]:
            break
    return torch.stack(frames, dim=1)
