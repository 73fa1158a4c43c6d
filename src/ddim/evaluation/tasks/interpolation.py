"""task=interpolation (DDIM Fig. 6): rows are pairs of latents (samples 2k, 2k+1 of the seed), columns slerp
weights 0..1, decoded with eta = 0 and sampler.steps."""

from __future__ import annotations

import time

import torch

from ddim.evaluation.context import EvalContext
from ddim.evaluation.reports.results import TaskResult
from ddim.evaluation.tasks._figure import figure_result, latents, network
from ddim.samplers import interpolate


@torch.inference_mode()
def run(ctx: EvalContext, *, n_pairs: int, n_points: int) -> TaskResult:
    t0 = time.perf_counter()
    z, _ = latents(ctx, 2 * int(n_pairs))
    seq = ctx.sampler.timestep_sequence(ctx.schedule)
    grid = interpolate(
        network(ctx), z[0::2], z[1::2], int(n_points), seq, ctx.schedule, batch_size=ctx.generation.batch_size
    )
    info = {
        "n_pairs": int(n_pairs),
        "n_points": int(n_points),
        "note": "eta=0 decoding of slerp(z0, z1, alpha)",
    }
    return figure_result(ctx, "interpolation", grid, info, t0)
