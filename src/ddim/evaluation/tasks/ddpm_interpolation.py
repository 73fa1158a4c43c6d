"""task=ddpm_interpolation: DDPM's interpolation of real images (Ho et al. 2020, Sec. 4.4, Figs. 8 and 9).

Two images of the data split are encoded with q as a stochastic encoder, x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps
and x'_t = sqrt(a_t) x'_0 + sqrt(1 - a_t) eps', mixed linearly, x_bar_t = (1 - lambda) x_t + lambda x'_t, and
decoded by the reverse process from t, x_bar_0 ~ p(x_0 | x_bar_t). One figure per t: a row per pair, the two
source images at the ends, the reconstructions (lambda = 0 and 1) beside them and the mixes between.

t counts forward steps, as in the paper: x_t is x_0 after t steps of q (t = 1..T, x_T = x_1000), so
a_t = alphas_cumprod[t - 1] and the reverse process starts at timestep index t - 1, which the network sees, as
DDPM's own `interpolate` does ("t == 0 means diffused for 1 step"): t = 1000 starts at index T - 1 = 999, and
t = 0 is the plain pixel blend with no diffusion (the first row of Fig. 9).

Noise ("We fixed the noise for different values of lambda so x_t and x'_t remain the same"): eps and eps' are
two independent draws (the paper's x_t, x'_t ~ q(x_t | x_0); DDPM's code calls q_sample once per image), and
the reverse process draws its noise from a third stream; pair k reads the three from the generators of sample
indices PAIR_INDEX + 3k, + 1, + 2 (seeded by (seed, index)), restarted for every lambda and every t. So the
columns of a row differ only by lambda, the figures only by t, and a rerun, another batch size or another
device gives the same images.

Decoding: the configured sampler on its own timestep grid cut at t: its members below t - 1, then t - 1
itself. The default, sampler=ddpm (eta 1 over all T timesteps), is DDPM's ancestral chain t - 1, ..., 0 with
its posterior variance (a learned variance when the model has one); sampler=ddim decodes deterministically.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import torch

from ddim.diffusion.forward import q_sample
from ddim.diffusion.schedule import Schedule
from ddim.errors import DDIMError
from ddim.evaluation.context import EvalContext
from ddim.evaluation.reports.results import TaskResult
from ddim.evaluation.tasks._figure import network, save_figure
from ddim.evaluation.tasks.nll import SPLITS, image_batch, split_dataset
from ddim.samplers import Sampler, initial_noise, per_sample_generators
from ddim.samplers.base import EpsFn, t_batch
from ddim.settings import Count, NonNegativeInt, Range

# Pair k draws eps, eps' and its reverse-process noise from the generators of sample indices PAIR_INDEX + 3k,
# + 1, + 2: far above any sample index a run makes and above progressive's continuations (2**31 + ...).
PAIR_INDEX = 3 * 2**30
STREAMS_PER_PAIR = 3


def start_index(t: int) -> int | None:
    """The timestep index where x_t sits (the paper's t counts forward steps): t - 1; None for t = 0."""
    return t - 1 if t > 0 else None


def decoder(sampler: Sampler, schedule: Schedule, t: int) -> Sampler:
    """The sampler that decodes x_t (t >= 1 forward steps): the sampler's own timestep grid cut at t - 1, its
    members below t - 1 and then t - 1 itself, checked against the schedule."""
    start = t - 1
    seq = [s for s in sampler.sequence(schedule) if s < start] + [start]
    return dataclasses.replace(sampler, timesteps=tuple(seq)).check_schedule(schedule)


def pair_noise(seed: int, n_pairs: int, shape: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """eps and eps' of each pair (n_pairs, C, H, W): one draw per image from its pair's streams."""
    first = per_sample_generators(seed, [PAIR_INDEX + STREAMS_PER_PAIR * k for k in range(n_pairs)])
    second = per_sample_generators(seed, [PAIR_INDEX + STREAMS_PER_PAIR * k + 1 for k in range(n_pairs)])
    return initial_noise((n_pairs, *shape), first), initial_noise((n_pairs, *shape), second)


def reverse_generators(seed: int, n_pairs: int, n_lambdas: int) -> list[torch.Generator]:
    """One generator per (pair, lambda) row, all of a pair seeded alike: the same reverse noise for every lambda."""
    return [
        g
        for k in range(n_pairs)
        for g in per_sample_generators(seed, [PAIR_INDEX + STREAMS_PER_PAIR * k + 2] * n_lambdas)
    ]


def interpolate_real(
    sampler: Sampler,
    eps_fn: EpsFn,
    x0: torch.Tensor,
    x1: torch.Tensor,
    noise: tuple[torch.Tensor, torch.Tensor],
    t: int,
    lambdas: Sequence[float],
    schedule: Schedule,
    seed: int,
    batch_size: int,
) -> torch.Tensor:
    """x_bar_0 ~ p(x_0 | (1 - lambda) x_t + lambda x'_t) for each pair of rows of x0, x1 and each lambda ->
    (P, L, C, H, W); x_t uses noise[0], x'_t noise[1]; t = 0 returns the pixel blend."""
    lams = torch.tensor(lambdas, dtype=x0.dtype, device=x0.device).view(1, -1, *[1] * (x0.ndim - 1))
    if t == 0:
        return (1 - lams) * x0[:, None] + lams * x1[:, None]
    x_t, x_t_prime = (
        q_sample(x, t_batch(start_index(t), x), e, schedule.alphas_cumprod)
        for x, e in zip((x0, x1), noise, strict=True)
    )
    mixed = ((1 - lams) * x_t[:, None] + lams * x_t_prime[:, None]).flatten(0, 1)
    decode = decoder(sampler, schedule, t)
    gens = reverse_generators(seed, x0.shape[0], len(lambdas))
    out = [
        decode.run(eps_fn, mixed[s : s + batch_size], schedule, generator=gens[s : s + batch_size])
        for s in range(0, mixed.shape[0], batch_size)
    ]
    return torch.cat(out).reshape(x0.shape[0], len(lambdas), *x0.shape[1:])


def _checked(
    ctx: EvalContext, n_available: int, n_pairs: int, images: Sequence[int] | None, steps: Sequence[int]
) -> list[tuple[int, int]]:
    """The image pairs, after the checks that need the checkpoint or the data (before any network call)."""
    T = ctx.schedule.num_timesteps
    if not steps or any(t > T for t in steps):
        raise DDIMError(
            f"ddpm_interpolation.diffusion_steps must be a non-empty list of forward steps in [0, {T}] "
            f"(this checkpoint has T={T}), got {list(steps)}: e.g. [{T // 4},{T // 2},{T}]."
        )
    chosen = list(range(2 * n_pairs)) if images is None else [int(i) for i in images]
    if len(chosen) % 2 or not chosen:
        raise DDIMError(
            f"ddpm_interpolation.images takes image indices two by two (pairs), got {len(chosen)}: {chosen}."
        )
    if max(chosen) >= n_available:
        raise DDIMError(
            f"ddpm_interpolation needs image {max(chosen)} of a split of {n_available} images: use fewer "
            "n_pairs or other ddpm_interpolation.images."
        )
    for t in steps:
        if t:
            decoder(ctx.sampler, ctx.schedule, t)  # refuses a sampler that cannot decode from t
    return list(zip(chosen[0::2], chosen[1::2], strict=True))


def _figure(
    ctx: EvalContext, t: int, pairs: list[tuple[int, int]], lambdas: list[float], grid: torch.Tensor
) -> tuple[Path, Path]:
    cols = [f"source #{pairs[0][0]}" if len(pairs) == 1 else "source x_0"]
    cols += [f"lambda={lam:g}" if lam in (0.0, 1.0) else f"{lam:g}" for lam in lambdas]
    cols += [f"source #{pairs[0][1]}" if len(pairs) == 1 else "source x'_0"]
    if t == 0:
        how = "t=0: the pixel blend (no diffusion)"
    else:
        steps = decoder(ctx.sampler, ctx.schedule, t).nfe(ctx.schedule)
        how = f"t={t} forward steps (x_t at index {t - 1}), decoded by {ctx.sampler.head()}, {steps} NFE"
    return save_figure(
        grid,
        ctx.output_dir / f"ddpm_interpolation_t{t}.png",
        [f"#{a} / #{b}" for a, b in pairs],
        cols,
        f"DDPM interpolation of real images, {how}; lambda=0, 1: reconstructions",
    )


@torch.inference_mode()
def run(
    ctx: EvalContext,
    *,
    split: Literal[SPLITS],
    n_pairs: Count,
    images: Sequence[NonNegativeInt] | None,
    diffusion_steps: Sequence[NonNegativeInt],
    lambdas: Sequence[Annotated[float, Range(ge=0, le=1)]],
    batch_size: Count | None,
) -> TaskResult:
    """images: split indices taken two by two, null = the first 2 * n_pairs; diffusion_steps: the paper's t
    (forward steps, 0..T); lambdas: 0 and 1 (the reconstructions) are always drawn; batch_size: null = the
    run's batch_size."""
    t0 = time.perf_counter()
    steps = sorted({int(t) for t in diffusion_steps})
    lams = sorted({0.0, 1.0, *(float(v) for v in lambdas)})
    dataset = split_dataset(ctx, split, "ddpm_interpolation")
    pairs = _checked(ctx, len(dataset), int(n_pairs), images, steps)
    x0 = torch.stack([image_batch(dataset, a, a + 1)[0] for a, _ in pairs]).to(ctx.device)
    x1 = torch.stack([image_batch(dataset, b, b + 1)[0] for _, b in pairs]).to(ctx.device)
    noise = tuple(n.to(ctx.device) for n in pair_noise(ctx.seed, len(pairs), x0.shape[1:]))
    batch = int(batch_size or ctx.generation.batch_size)
    figures: dict[str, Path] = {}
    raws: dict[str, str] = {}
    for t in steps:
        mixes = interpolate_real(
            ctx.sampler, network(ctx), x0, x1, noise, t, lams, ctx.schedule, ctx.seed, batch
        )
        grid = torch.cat([x0[:, None], mixes, x1[:, None]], 1)
        figures[f"t{t}"], raw = _figure(ctx, t, pairs, lams, grid)
        raws[f"t{t}"] = str(raw)
    record: dict[str, Any] = {
        "task": "ddpm_interpolation",
        **ctx.sampler_record(ctx.sampler),
        "split": split,
        "pairs": [list(p) for p in pairs],
        "diffusion_steps": steps,
        "start_timesteps": {f"t{t}": start_index(t) for t in steps},
        "decode_nfe": {
            f"t{t}": decoder(ctx.sampler, ctx.schedule, t).nfe(ctx.schedule) if t else 0 for t in steps
        },
        "lambdas": lams,
        "noise": f"pair k: eps, eps', reverse noise from sample indices {PAIR_INDEX} + 3k + 0, 1, 2 of the seed",
        "t_convention": "t = forward steps; x_t = q_sample at index t - 1 (t = T starts at T - 1); t = 0: pixel blend",
        "figure": str(figures[f"t{steps[-1]}"]),
        "figures": {k: str(v) for k, v in figures.items()},
        "figures_raw": raws,
        "wall_time_s": round(time.perf_counter() - t0, 3),
    }
    return TaskResult(record, images={f"ddpm_interpolation_{k}": v for k, v in figures.items()})
