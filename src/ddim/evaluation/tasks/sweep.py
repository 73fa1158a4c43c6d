"""task=sweep: the eta x S grid of DDIM Table 1 inside one job (one process group, e.g. DDP over 8 GPUs),
ending with table1.md/.csv and fid_vs_steps.png; the Hydra multirun gives the same table one job per point."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from ddim.errors import DDIMError
from ddim.evaluation.context import EvalContext
from ddim.evaluation.reports.results import TaskResult
from ddim.evaluation.reports.tables import paper_key, write_table1
from ddim.evaluation.tasks.fid import generate_point
from ddim.io import write_json
from ddim.samplers import DDIM, Sampler
from ddim.settings import Count, NonNegative

log = logging.getLogger(__name__)


def grid(base: Sampler, etas: Sequence[float], steps: Sequence[int], sigma_hat: bool) -> list[DDIM]:
    """eta x S points of the DDIM family with the base sampler's spacing, plus the sigma_hat row (DDPM,
    larger variance, clipped x0_hat) when asked."""
    if not isinstance(base, DDIM):
        raise DDIMError(
            f"task=sweep is DDIM Table 1's eta x S grid of the generalized sampler; sampler={base.name} has no "
            "eta. Use sampler=ddim (sampler.skip_type sets the spacing), or a multirun over samplers."
        )
    if base.timesteps_file is not None:
        raise DDIMError(
            "task=sweep varies sampler.steps and eta, but sampler.timesteps_file fixes the sequence (and eta); "
            "score it with task=fid, or compare files in a multirun: sampler.timesteps_file=a.json,b.json."
        )
    if not steps or (not etas and not sigma_hat):
        raise DDIMError("sweep.steps and sweep.etas (or sweep.sigma_hat=true) must not be empty.")
    points = [
        dataclasses.replace(base, eta=float(e), steps=int(n), variance="eta", timesteps=None)
        for e in etas
        for n in steps
    ]
    if sigma_hat:
        points += [
            dataclasses.replace(
                base, eta=0.0, steps=int(n), variance="sigma_hat", clip_x0=True, timesteps=None
            )
            for n in steps
        ]
    return points


def run(
    ctx: EvalContext,
    *,
    etas: Sequence[NonNegative],
    steps: Sequence[Count],
    sigma_hat: bool,
    metrics: bool,
) -> TaskResult | None:
    # Every point is checked (and dry-run) before the first image.
    points = [p.check_schedule(ctx.schedule) for p in grid(ctx.sampler, etas, steps, sigma_hat)]
    trainer = ctx.make_trainer()
    scorer = ctx.make_scorer(trainer.is_global_zero) if metrics else None
    records = []
    for i, p in enumerate(points):
        if trainer.is_global_zero:
            log.info(f"Grid point {i + 1}/{len(points)}: {p.tag()}")
        record = generate_point(ctx, trainer, p, ctx.generation.samples_dir / p.tag(), scorer)
        if record is not None:
            records.append(record)
            write_json(ctx.output_dir / "points" / f"{p.tag()}.json", record)
    if not trainer.is_global_zero:
        return None
    summary: dict[str, Any] = {"task": "sweep", "checkpoint": ctx.checkpoint, "points": records}
    if scorer is None:
        return TaskResult(summary)
    paths = write_table1(records, ctx.output_dir, "fid", paper_key(ctx.data_target))
    summary["table"] = {k: str(v) for k, v in paths.items()}
    return TaskResult(
        summary,
        images={"fid_vs_steps": paths["fid_vs_steps.png"]},
        tables={"table1": paths["table1.csv"], "results": paths["results.csv"]},
    )
