"""task=progressive: DDPM's progressive generation and decompression (Sec. 4.3), three figures:

Each is written with its labels (t of each column, sample or image of each row) and as <name>_raw.png without.

progressive.png     x0_hat along one chain of the configured sampler (DDPM Fig. 6 with sampler=ddpm)
decompression.png   real images of the data split: x_t ~ q(x_t | x_0) and the network's x0_hat(x_t) at
                    each of progressive.timesteps (what a receiver holding x_t could reconstruct)
shared_latents.png  one chain stopped at each t, then n continuations with their own noise: samples of
                    p(x_0 | x_t) that share x_t (DDPM Fig. 7 / 10). Continuations are ancestral (eta = 1,
                    or the sampler's sigma_hat variance, and a learned variance when the model has one) on
                    the sampler's sub-sequence, since p(x_0 | x_t) is the ancestral chain; a stop is the
                    sub-sequence's timestep nearest to each requested t.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from ddim.errors import DDIMError
from ddim.evaluation.context import EvalContext
from ddim.evaluation.reports.results import TaskResult
from ddim.evaluation.tasks._figure import latents, network, save_figure
from ddim.evaluation.tasks.nll import SPLITS, image_batch, split_dataset
from ddim.images import raw_grid_path
from ddim.samplers import (
    denoise_from,
    initial_noise,
    per_sample_generators,
    progressive_frames,
    shared_latents,
)
from ddim.settings import Count, NonNegativeInt

# Continuation c of stop k draws from the generator of sample index CONTINUATION_INDEX + k * n + c: far above
# any sample index a run makes, so continuations never replay the noise of task=sample's images.
CONTINUATION_INDEX = 2**31
DEFAULT_FRAMES = 10


def _timesteps(values: Sequence[int] | None, T: int) -> list[int]:
    """The requested t, validated, distinct, from the noisiest to the cleanest; None = 10 spread over [0, T-1]."""
    if values is None:
        return sorted({round(v) for v in torch.linspace(0, T - 1, DEFAULT_FRAMES).tolist()}, reverse=True)
    try:
        ts = [int(v) for v in values if not isinstance(v, bool) and int(v) == v]
    except (TypeError, ValueError):
        ts = []
    if not ts or len(ts) != len(values) or any(not 0 <= t < T for t in ts):
        raise DDIMError(
            f"progressive.timesteps must be a list of integers in [0, {T - 1}] (this checkpoint has T={T}), "
            f"got {values!r}: pass e.g. progressive.timesteps=[{T - 1},{T // 2},{T // 10},0], or null."
        )
    return sorted(set(ts), reverse=True)


def nearest_members(timesteps: list[int], seq: list[int]) -> list[int]:
    """For each t, the member of the sub-sequence nearest to it (the lower on a tie), without repeats."""
    stops = [min(seq, key=lambda s: (abs(s - t), s)) for t in timesteps]
    return list(dict.fromkeys(stops))


def continuation_generators(seed: int, n_stops: int, n: int) -> list[list[torch.Generator]]:
    return [
        per_sample_generators(seed, range(CONTINUATION_INDEX + k * n, CONTINUATION_INDEX + (k + 1) * n))
        for k in range(n_stops)
    ]


def chain_figure(ctx: EvalContext, n_samples: int, every: int | None) -> tuple[Path, dict[str, Any]]:
    """progressive.png: x0_hat along the chains of the first n_samples latents."""
    seq = ctx.sampler.sequence(ctx.schedule)
    x_T, generators = latents(ctx, n_samples)
    every = every or max(1, len(seq) // 10)
    chain, ts = progressive_frames(ctx.sampler, network(ctx), x_T, ctx.schedule, every, generators)
    path, _ = save_figure(
        chain,
        ctx.output_dir / "progressive.png",
        [f"sample #{i}" for i in range(n_samples)],
        [f"t={t}" for t in ts],
        f"x0_hat predicted at step t along the chain of {ctx.sampler.tag()}",
    )
    return path, {
        "n_samples": n_samples,
        "every": every,
        "frames": int(chain.shape[1]),
        "frame_timesteps": ts,
    }


def decompression_figure(
    ctx: EvalContext, dataset: Any, n_images: int, ts: list[int]
) -> tuple[Path, dict[str, Any]]:
    """decompression.png: per real image, x_t and x0_hat(x_t) at each t (one noise draw per image)."""
    n = min(n_images, len(dataset))
    x0 = image_batch(dataset, 0, n).to(ctx.device)
    noise = initial_noise(x0.shape, per_sample_generators(ctx.seed, range(n)), device=ctx.device)
    x_ts, x0_hats = denoise_from(network(ctx), x0, ts, ctx.schedule, noise)
    originals = x0[:, None]
    rows = torch.stack([torch.cat([originals, x_ts], 1), torch.cat([originals, x0_hats], 1)], 1)
    path, _ = save_figure(
        rows.flatten(0, 1),
        ctx.output_dir / "decompression.png",
        [f"image #{i} {kind}" for i in range(n) for kind in ("x_t", "x0_hat")],
        ["x_0"] + [f"t={t}" for t in ts],
        "x_t ~ q(x_t | x_0) and the network's x0_hat(x_t) at step t (one noise draw per image)",
    )
    return path, {"n_images": n, "decompression_timesteps": ts}


def shared_latents_figure(
    ctx: EvalContext, ts: list[int], n_continuations: int
) -> tuple[Path, dict[str, Any]]:
    """shared_latents.png: sample 0's chain stopped near each t, then ancestral continuations from there."""
    s, seq = ctx.sampler, ctx.sampler.sequence(ctx.schedule)
    stops = nearest_members(ts, seq)
    chain_x_T, chain_generators = latents(ctx, 1)  # the chain of sample 0
    x_t, samples = shared_latents(
        network(ctx), chain_x_T, seq, ctx.schedule, stops, chain_generators,
        continuation_generators(ctx.seed, len(stops), n_continuations),
        eta=1.0, variance=getattr(s, "variance", "eta"), clip_x0=getattr(s, "clip_x0", False),
    )  # fmt: skip
    path, _ = save_figure(
        torch.cat([x_t[:, None], samples], 1),
        ctx.output_dir / "shared_latents.png",
        [f"stop t={t}" for t in stops],
        ["x_t"] + [f"sample {c + 1}" for c in range(n_continuations)],
        f"samples of p(x_0 | x_t) sharing x_t of sample #0's chain; ancestral (eta 1) on {s.tag()}",
    )
    return path, {"shared_latent_timesteps": stops, "n_continuations": n_continuations}


@torch.inference_mode()
def run(
    ctx: EvalContext,
    *,
    n_samples: Count,
    every: Count | None,
    split: Literal[SPLITS],
    n_images: NonNegativeInt,
    timesteps: Sequence[NonNegativeInt] | None,
    n_continuations: NonNegativeInt,
) -> TaskResult:
    """every: keep every k-th step's x0_hat; None = about 11 frames. n_images / n_continuations: 0 = skip
    that figure."""
    t0 = time.perf_counter()
    ts = _timesteps(timesteps, ctx.schedule.num_timesteps)
    dataset = split_dataset(ctx, split, "progressive") if n_images else None  # before any network call
    paths, info = {}, {}
    paths["progressive"], info["chain"] = chain_figure(ctx, n_samples, every)
    if n_images:
        paths["decompression"], info["decompression"] = decompression_figure(ctx, dataset, n_images, ts)
        info["decompression"]["split"] = split
    if n_continuations:
        paths["shared_latents"], info["shared_latents"] = shared_latents_figure(ctx, ts, n_continuations)
    record = {
        "task": "progressive",
        **ctx.sampler_record(ctx.sampler),
        **{k: v for part in info.values() for k, v in part.items()},
        "figure": str(paths["progressive"]),
        "figures": {k: str(v) for k, v in paths.items()},
        "figures_raw": {k: str(raw_grid_path(v)) for k, v in paths.items()},
        "wall_time_s": round(time.perf_counter() - t0, 3),
    }
    return TaskResult(record, images=paths)
