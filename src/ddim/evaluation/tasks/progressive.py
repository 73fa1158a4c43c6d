"""task=progressive (DDPM Fig. 6 with sampler=ddpm): x0_hat along one chain of the configured sampler."""

from __future__ import annotations

import time

import torch

from ddim.errors import DDIMError
from ddim.evaluation.context import EvalContext
from ddim.evaluation.reporting import TaskResult
from ddim.evaluation.tasks._figure import figure_result, latents, network
from ddim.samplers import progressive


@torch.inference_mode()
def run(ctx: EvalContext, *, n_samples: int, every: int | None) -> TaskResult:
    """every: keep every k-th step's x0_hat; None = about 11 frames."""
    t0 = time.perf_counter()
    x_T, generators = latents(ctx, int(n_samples))
    s = ctx.sampler
    if s.name != "ddim":
        raise DDIMError(
            f"task=progressive shows x0_hat along the generalized (DDIM/DDPM) chain; sampler={s.name} keeps no "
            "such trajectory: use sampler=ddim or sampler=ddpm."
        )
    seq = s.timestep_sequence(ctx.schedule)
    every = int(every) if every else max(1, len(seq) // 10)
    grid = progressive(
        network(ctx),
        x_T,
        seq,
        ctx.schedule,
        every=every,
        eta=float(s.eta),
        variance=s.variance,
        clip_x0=s.clip_x0,
        generator=generators,
    )
    info = {"n_samples": int(n_samples), "every": every, "frames": int(grid.shape[1])}
    return figure_result(ctx, "progressive", grid, info, t0)
