"""task=fid: generate n_samples images with the configured sampler, then FID (IS/KID via fid.isc / fid.kid).

`generate_point` is one point of any sample grid (this task, task=sample, each point of task=sweep)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from ddim.evaluation.context import EvalContext
from ddim.evaluation.generation import generate_samples
from ddim.evaluation.reports.results import TaskResult
from ddim.images import save_grid
from ddim.metrics.scoring import Scorer
from ddim.metrics.shards import ShardImages, ShardPlan, read_images
from ddim.samplers import Sampler

log = logging.getLogger(__name__)


def generate_point(
    ctx: EvalContext, trainer: pl.Trainer, sampler: Sampler, samples_dir: Path, scorer: Scorer | None
) -> dict[str, Any] | None:
    """Generate (all ranks), then on rank 0 draw the grid, score and describe the point. None on other ranks."""
    g = ctx.generation
    t0 = time.perf_counter()
    result = generate_samples(
        trainer,
        ctx.net,
        ctx.schedule,
        sampler,
        ctx.image_shape,
        samples_dir,
        n_samples=g.n_samples,
        seed=ctx.seed,
        batch_size=g.batch_size,
        shard_size=g.shard_size,
        identity=ctx.identity(sampler),
    )
    if not trainer.is_global_zero:
        return None
    plan = ShardPlan(g.n_samples, g.shard_size)
    grid = save_grid(
        read_images(samples_dir, plan, limit=g.grid_size), samples_dir.parent / f"{samples_dir.name}_grid.png"
    )
    record: dict[str, Any] = {
        **ctx.sampler_record(sampler),
        "n_samples": plan.n_samples,
        "generated": result.generated,
        "generation_s": round(result.seconds, 3),
        "images_per_s": None if result.images_per_second is None else round(result.images_per_second, 3),
        "world_size": trainer.world_size,
        "samples_dir": str(samples_dir),
        "grid": str(grid),
    }
    if scorer is not None:
        t1 = time.perf_counter()
        metrics = scorer.score(ShardImages(samples_dir, plan))
        record.update(
            fid=metrics.get("fid"),
            **{"is": metrics.get("is"), "is_std": metrics.get("is_std")},
            kid=metrics.get("kid"),
            kid_std=metrics.get("kid_std"),
            metric_s=round(time.perf_counter() - t1, 3),
            feature_extractor=scorer.extractor_name,
            reference=scorer.reference_desc,
            reference_n=scorer.reference.n,
        )
        log.info(f"{sampler.tag()}: FID {record['fid']:.4f} ({plan.n_samples} samples)")
    record["wall_time_s"] = round(time.perf_counter() - t0, 3)
    return record


def one_point(ctx: EvalContext, task: str, with_metrics: bool) -> TaskResult | None:
    trainer = ctx.make_trainer()
    scorer = ctx.make_scorer(trainer.is_global_zero) if with_metrics else None
    record = generate_point(ctx, trainer, ctx.sampler, ctx.generation.samples_dir, scorer)
    if record is None:
        return None
    return TaskResult({"task": task, **record}, images={"samples": Path(record["grid"])})


def run(ctx: EvalContext) -> TaskResult | None:
    return one_point(ctx, "fid", with_metrics=True)
