"""Shared by the figure tasks (interpolation, consistency, progressive, ddpm_interpolation): small,
single-process, drawn from the first latents of the run's seed. Every figure is written twice: <name>.png with
the labels that say what each row and column shows, and <name>_raw.png, the same grid without them."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ddim.errors import DDIMError
from ddim.evaluation.context import EvalContext
from ddim.evaluation.reports.results import TaskResult
from ddim.images import raw_grid_path, save_labeled_grid
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


def save_figure(
    grid: torch.Tensor,
    path: Path,
    row_labels: Sequence[str] | None,
    col_labels: Sequence[str] | None,
    title: str,
) -> tuple[Path, Path]:
    """<name>.png with its labels and <name>_raw.png without them; returns both paths."""
    raw = raw_grid_path(path)
    return save_labeled_grid(grid, path, row_labels, col_labels, title, raw_path=raw), raw


def figure_result(
    ctx: EvalContext,
    task: str,
    grid: torch.Tensor,
    info: dict[str, Any],
    t0: float,
    labels: tuple[Sequence[str] | None, Sequence[str] | None, str],
) -> TaskResult:
    """Write <task>.png (labels: rows, columns, title) and <task>_raw.png into the run directory and
    describe them."""
    path, raw = save_figure(grid, ctx.output_dir / f"{task}.png", *labels)
    record = {
        "task": task,
        **ctx.sampler_record(ctx.sampler),
        **info,
        "figure": str(path),
        "figure_raw": str(raw),
        "wall_time_s": round(time.perf_counter() - t0, 3),
    }
    return TaskResult(record, images={task: path})
