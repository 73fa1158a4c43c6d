"""task=sample: generate n_samples images (PNG shards + grid) without metrics; no Inception weights needed."""

from __future__ import annotations

from ddim.evaluation.context import EvalContext
from ddim.evaluation.reports.results import TaskResult
from ddim.evaluation.tasks.fid import one_point


def run(ctx: EvalContext) -> TaskResult | None:
    return one_point(ctx, "sample", with_metrics=False)
