"""task=rate_distortion: DDPM's progressive coding (Sec. 4.3, Fig. 5, Table 4).

Rate at step t = L_T + the KL terms from T down to t (bits/dim, what a receiver has been sent when it holds
x_t); distortion = RMSE on the [0, 255] scale of x0_hat(x_t) against x_0. The split at t = 1 is the headline:
rate = L_T + all KL terms (1.78 bits/dim on CIFAR10), distortion = L_0 (1.97 bits/dim, RMSE 0.95).
Uses task=nll's exact measurement (and its per-batch files), so both tasks share one set of numbers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from ddim.diffusion.likelihood import exact_bound
from ddim.evaluation.context import EvalContext
from ddim.evaluation.reports.results import TaskResult, write_figure
from ddim.evaluation.tasks.nll import SPLITS, measure, per_timestep_rows, write_csv
from ddim.settings import Count


def _plots(path: Path, rows: list[dict[str, Any]]) -> Path:
    """DDPM Fig. 5: distortion vs rate, and both against the reverse-process step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t"] for r in rows]
    rate = [r["rate_bits_per_dim"] for r in rows]
    dist = [r["distortion_rmse_255"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].plot(rate, dist)
    axes[0].set_xlabel("rate (bits/dim)")
    axes[0].set_ylabel("distortion (RMSE, [0, 255])")
    axes[1].plot(t, rate)
    axes[1].set_ylabel("rate (bits/dim)")
    axes[2].plot(t, dist)
    axes[2].set_ylabel("distortion (RMSE, [0, 255])")
    for ax in axes[1:]:
        ax.set_xlabel("reverse process step t")
        ax.invert_xaxis()
    for ax in axes:
        ax.grid(True, alpha=0.3)
    write_figure(fig, path)
    return path


def run(
    ctx: EvalContext,
    *,
    split: Literal[SPLITS],
    n_images: Count | None,
    batch_size: Count,
    max_batch: Count,
    clip_x0: bool,
) -> TaskResult | None:
    t0 = time.perf_counter()
    measured = measure(
        ctx,
        split=split,
        n_images=n_images,
        mode="exact",
        timesteps_per_image=ctx.schedule.num_timesteps,
        batch_size=batch_size,
        max_batch=max_batch,
        clip_x0=clip_x0,
        task="rate_distortion",
    )
    if measured is None:  # ranks other than 0
        return None
    terms, info = measured
    rows = per_timestep_rows(terms)
    est = exact_bound(terms)
    numbers = {
        "rate_bits_per_dim": float((est.prior + est.kl).mean()),  # at t = 1: L_T + every KL term
        "distortion_bits_per_dim": float(est.decoder.mean()),  # L_0
        "distortion_rmse_255": rows[0]["distortion_rmse_255"],  # x0_hat(x_1) vs x_0
        "bits_per_dim": float(est.total.mean()),
    }
    table = write_csv(ctx.output_dir / "rate_distortion.csv", rows)
    figure = _plots(ctx.output_dir / "rate_distortion.png", rows)
    record = {
        "task": "rate_distortion",
        "checkpoint": ctx.checkpoint,
        "seed": ctx.seed,
        **info,
        **numbers,
        "wall_time_s": round(time.perf_counter() - t0, 3),
    }
    return TaskResult(
        record, images={"rate_distortion": figure}, tables={"rate_distortion": table}, numbers=numbers
    )
