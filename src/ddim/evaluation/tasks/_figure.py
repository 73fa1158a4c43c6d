"""Shared by the figure tasks (interpolation, consistency, progressive): small, single-process, one figure
each, drawn from the first latents of the run's seed."""

from __future__ import annotations

import time
from typing import Any

import torch

from ddim.errors import DDIMError
from ddim.evaluation.context import EvalContext
from ddim.evaluation.reports.results import TaskResult
from ddim.images import save_grid
from ddim.samplers import Sampler, initial_noise, per_sample_generators


def latents(ctx: EvalContext, n: int) -> tuple[torch.Tensor, list[torch.Generator]]:
    """x_T of samples 0..n-1 (the same as task=sample's first images) and their generators, on ctx.device."""
    generators = per_sample_generators(ctx.seed, range(n))
    return initial_noise((n, *ctx.image_shape), generators, device=ctx.device), generators


def network(ctx: EvalContext) -> torch.nn.Module:
    return ctx.net.to(ctx.device).eval()


def deterministic_sampler(ctx: EvalContext, task: str) -> Sampler:
    """The run's sampler, refused if it adds noise: these figures compare deterministic decodings of x_T."""
    if ctx.sampler.stochastic:
        raise DDIMError(
            f"task={task} decodes x_T deterministically, but sampler {ctx.sampler.tag()} adds noise: use "
            "sampler=ddim (eta 0, the paper's) or another deterministic sampler (dpm_solver_pp, unipc, heun, ...)."
        )
    return ctx.sampler


def figure_result(
    ctx: EvalContext, task: str, grid: torch.Tensor, info: dict[str, Any], t0: float
) -> TaskResult:
    """Write <task>.png into the run directory and describe it."""
    path = save_grid(grid, ctx.output_dir / f"{task}.png")
    record = {
        "task": task,
        **ctx.sampler_record(ctx.sampler),
        **info,
        "figure": str(path),
        "wall_time_s": round(time.perf_counter() - t0, 3),
    }
    return TaskResult(record, images={task: path})
