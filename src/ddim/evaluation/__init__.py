"""Evaluation: sharded seeded sample generation, FID/IS/KID, the paper's tables, plots and figures.

dispatch.py    evaluate(cfg): context -> the task's run(ctx, **its options) -> metrics.json + loggers
context.py     checkpoint -> network, schedule, validated sampler, image shape; run settings; builders
launch.py      the predict-only Trainer, local-multirun device rule, single device
scoring.py     Scorer (extractor + reference statistics), prepared before any sample is made
tasks/         one module per task, registered in tasks.TASKS
generation.py, shards.py     seeded, sharded, resumable sample files
fid.py, inception.py, reference.py    the metrics; tables.py, reporting.py    results
sweep_callback.py    Hydra callback: a multirun's jobs -> sweep tables
"""

from ddim.evaluation.dispatch import evaluate
from ddim.evaluation.fid import (
    Statistics,
    compute_metrics,
    extract_features,
    feature_statistics,
    frechet_distance,
)
from ddim.evaluation.generation import GenerationResult, SampleWriter, generate_samples
from ddim.evaluation.shards import ShardImages, ShardPlan, read_images, write_shard

__all__ = [
    "GenerationResult",
    "SampleWriter",
    "ShardImages",
    "ShardPlan",
    "Statistics",
    "compute_metrics",
    "evaluate",
    "extract_features",
    "feature_statistics",
    "frechet_distance",
    "generate_samples",
    "read_images",
    "write_shard",
]
