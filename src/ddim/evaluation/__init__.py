"""Evaluation: sharded seeded sample generation, FID/IS/KID, the paper's tables, plots and figures.

dispatch.py    evaluate(cfg): context -> the task's run(ctx, **its options) -> metrics.json + loggers
context.py     checkpoint -> network, schedule, validated sampler, image shape; run settings; builders
launch.py      the predict-only Trainer, local-multirun device rule, single device
tasks/         one module per task, registered in tasks.TASKS
generation.py  seeded, sharded, resumable sample files (stored with ddim.metrics.shards)
reports/       task results and loggers, the paper's tables and plots, a multirun's table, the ablation table
The metrics themselves (FID/IS/KID, Inception, reference statistics) live in ddim.metrics.
"""

from ddim.evaluation.dispatch import evaluate
from ddim.evaluation.generation import GenerationResult, SampleWriter, generate_samples

__all__ = ["GenerationResult", "SampleWriter", "evaluate", "generate_samples"]
