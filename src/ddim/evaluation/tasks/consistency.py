"""task=consistency (DDIM Fig. 5): the same x_T decoded with each S by the configured deterministic sampler
(the paper's: DDIM, eta = 0); high-level features agree."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from ddim.evaluation.context import EvalContext
from ddim.evaluation.reports.results import TaskResult
from ddim.evaluation.tasks._figure import deterministic_sampler, figure_result, latents, network
from ddim.samplers import consistency
from ddim.settings import Count


@torch.inference_mode()
def run(ctx: EvalContext, *, n_samples: Count, steps: Sequence[Count]) -> TaskResult:
    t0 = time.perf_counter()
    x_T, _ = latents(ctx, int(n_samples))
    steps = [int(s) for s in steps]
    grid = consistency(deterministic_sampler(ctx, "consistency"), network(ctx), x_T, steps, ctx.schedule)
    labels = (
        [f"x_T #{i}" for i in range(int(n_samples))],
        [f"S={s}" for s in steps],
        f"one x_T per row decoded with S steps: {ctx.sampler.label()}",
    )
    info = {"n_samples": int(n_samples), "steps_list": steps}
    return figure_result(ctx, "consistency", grid, info, t0, labels)
