"""task=interpolation (DDIM Fig. 6): rows are pairs of latents (samples 2k, 2k+1 of the seed), columns slerp
weights 0..1, each decoded with the configured deterministic sampler (the paper's: DDIM, eta = 0)."""

from __future__ import annotations

import time
from typing import Annotated

import torch

from ddim.evaluation.context import EvalContext
from ddim.evaluation.reports.results import TaskResult
from ddim.evaluation.tasks._figure import deterministic_sampler, figure_result, latents, network
from ddim.samplers import interpolate
from ddim.settings import Count, Range


@torch.inference_mode()
def run(ctx: EvalContext, *, n_pairs: Count, n_points: Annotated[int, Range(ge=2)]) -> TaskResult:
    t0 = time.perf_counter()
    z, _ = latents(ctx, 2 * int(n_pairs))
    grid = interpolate(
        deterministic_sampler(ctx, "interpolation"),
        network(ctx),
        z[0::2],
        z[1::2],
        int(n_points),
        ctx.schedule,
        ctx.generation.batch_size,
    )
    info = {
        "n_pairs": int(n_pairs),
        "n_points": int(n_points),
        "note": f"{ctx.sampler.tag()} decoding of slerp(z0, z1, alpha)",
    }
    alphas = torch.linspace(0.0, 1.0, int(n_points), dtype=torch.float64).tolist()
    labels = (
        [f"x_T #{2 * k}, #{2 * k + 1}" for k in range(int(n_pairs))],
        [f"alpha={a:.2f}" for a in alphas],
        f"slerp(x_T #2k, x_T #2k+1, alpha) decoded by {ctx.sampler.tag()}",
    )
    return figure_result(ctx, "interpolation", grid, info, t0, labels)
