"""Evaluation: sharded seeded sample generation, FID/IS/KID, the paper's tables, plots and figures."""

from ddim.evaluation.fid import (
    Statistics,
    compute_metrics,
    extract_features,
    feature_statistics,
    frechet_distance,
)
from ddim.evaluation.generation import GenerationResult, SampleWriter, generate_samples
from ddim.evaluation.runner import evaluate
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
