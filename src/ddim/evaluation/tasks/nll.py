"""task=nll: the variational bound of DDPM in bits/dim on the test (or train) split (DDPM Table 1: <= 3.75
on CIFAR10 test with L_simple, 3.70 trained on the true bound).

    exact: all T terms per image (T network calls per image, batched across timesteps), with the breakdown
           L_T (prior) + sum of L_{t-1} (KL) + L_0 (decoder) and every per-timestep term in nll_terms.csv.
    mc:    L_T and the decoder L_0 exactly, and the sum of the KL terms estimated from K timesteps drawn one
           per stratum of 1..T-1 (K + 1 network calls per image): an unbiased estimate of each image's bound;
           the mean over images comes with a 95% Student-t confidence interval.

Seeded per image (image i's timesteps and noise come from generators seeded by (seed, i)), so a result does
not depend on batch sizes or the number of processes. Runs through trainer.predict like generation: batches of
images are split round-robin over the ranks (trainer.devices=N), each batch is stored in its own file, an
interrupted run resumes from the files it finds, and rank 0 reads them all.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ddim.diffusion.likelihood import (
    BoundTerms,
    bound_terms,
    exact_bound,
    is_discrete,
    kl_strata,
    mean_and_ci,
    monte_carlo_bound,
    monte_carlo_timesteps,
)
from ddim.diffusion.parameterization import ModelFn
from ddim.diffusion.schedule import Schedule
from ddim.errors import DDIMError
from ddim.evaluation.context import EvalContext
from ddim.evaluation.generation import Chunks
from ddim.evaluation.reports.results import TaskResult, write_figure
from ddim.io import save_tensors, write_text
from ddim.metrics.shards import ShardPlan
from ddim.samplers import per_sample_generators
from ddim.settings import Count

MODES = ("exact", "mc")
SPLITS = ("test", "train")
BITS_TO_RMSE = 127.5  # x0_hat errors on [-1, 1] -> the [0, 255] scale

log = logging.getLogger(__name__)


def split_dataset(ctx: EvalContext, split: str, task: str = "nll") -> Any:
    """The test or train set of the data config (refused when its images are not the checkpoint's shape)."""
    if split not in SPLITS:
        raise DDIMError(f"{task}.split must be one of {SPLITS}, got {split!r}.")
    dm = ctx.make_datamodule()  # refuses data whose image shape is not the checkpoint's
    try:
        return dm.test_set if split == "test" else dm.train_set
    except FileNotFoundError as err:
        raise DDIMError(f"task={task} needs the {split} split: {err}") from err


def image_batch(dataset: Any, start: int, stop: int) -> torch.Tensor:
    items = [dataset[i] for i in range(start, stop)]
    return torch.stack([x[0] if isinstance(x, (list, tuple)) else x for x in items])


def _timestep_generator(noise_generator: torch.Generator) -> torch.Generator:
    """A second stream per image for its drawn timesteps, so image i's noise (and so its exact L_0 and its
    x_t at t = 0) is the same in exact and mc mode."""
    return torch.Generator().manual_seed((noise_generator.initial_seed() * 0x85EBCA6B + 0x27D4EB2F) % 2**32)


def bound_for_images(
    net: ModelFn,
    schedule: Schedule,
    x0: torch.Tensor,
    indices: range,
    seed: int,
    mode: str,
    draws: int,
    max_batch: int,
    clip_x0: bool,
) -> BoundTerms:
    """Bound terms of a batch of images (on x0's device), seeded per image index: the same numbers for any
    batch size, process count or resume."""
    T = schedule.num_timesteps
    generators = per_sample_generators(seed, indices)
    if mode == "exact":
        timesteps = torch.arange(T).repeat(len(indices), 1)
    else:
        timesteps = torch.stack([monte_carlo_timesteps(T, draws, _timestep_generator(g)) for g in generators])
    shape = tuple(x0.shape[1:])

    def noise(i: int, k: int) -> torch.Tensor:
        return torch.randn(shape, generator=generators[i])

    def predict(x: torch.Tensor, t: torch.Tensor):
        return net.predict(x, t, clip_x0=clip_x0)

    return bound_terms(predict, x0, timesteps, schedule, noise, max_batch=max_batch)


def _check_discrete(x0: torch.Tensor) -> None:
    if not is_discrete(x0):
        raise DDIMError(
            "task=nll needs 8-bit images (256 levels on [-1, 1]): the decoder term is a probability of "
            "pixel values. This data set's values are not on those levels."
        )


def batch_file(folder: Path, plan: ShardPlan, batch: int) -> Path:
    idx = plan.indices(batch)
    return folder / f"images_{idx.start:07d}_{idx.stop:07d}.pt"


class BoundWriter(pl.LightningModule):
    """trainer.predict over the batches of images (ShardPlan shards, split round-robin by rank as generation
    does): each batch's terms go to their own file, so any rank's work survives an interruption."""

    def __init__(
        self, net: ModelFn, schedule: Schedule, dataset: Any, plan: ShardPlan, folder: Path, **options: Any
    ) -> None:
        super().__init__()
        self.net, self.schedule, self.dataset = net, schedule, dataset
        self.plan, self.folder, self.options = plan, folder, options

    def predict_dataloader(self) -> DataLoader:
        mine = self.plan.shards_for_rank(self.trainer.global_rank, self.trainer.world_size)
        todo = [(b, 0, 0) for b in mine if not batch_file(self.folder, self.plan, b).is_file()]
        return DataLoader(Chunks(todo), batch_size=None, shuffle=False, num_workers=0)

    def on_predict_start(self) -> None:
        self.net.eval()

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        b = int(batch[0])
        idx = self.plan.indices(b)
        x0 = image_batch(self.dataset, idx.start, idx.stop)
        _check_discrete(x0)
        terms = bound_for_images(self.net, self.schedule, x0.to(self.device), idx, **self.options)
        save_tensors(terms._asdict(), batch_file(self.folder, self.plan, b))


def measure(
    ctx: EvalContext,
    *,
    split: Literal[SPLITS],
    n_images: Count | None,
    mode: Literal[MODES],
    timesteps_per_image: Count,
    batch_size: Count,
    max_batch: Count,
    clip_x0: bool,
    task: str = "nll",
) -> tuple[BoundTerms, dict[str, Any]] | None:
    """The bound terms of the first n_images of the split, from (or into) one file per batch of images, on
    every rank of the configured Trainer; rank 0 reads them all (None on the other ranks)."""
    T = ctx.schedule.num_timesteps
    if mode == "mc" and timesteps_per_image > T - 1:
        raise DDIMError(
            f"nll.timesteps_per_image={timesteps_per_image} is more than the checkpoint's T - 1 = {T - 1} KL terms: "
            "use nll.mode=exact for all of them, or fewer timesteps."
        )
    dataset = split_dataset(ctx, split, task)
    n = len(dataset) if n_images is None else min(n_images, len(dataset))
    _check_discrete(image_batch(dataset, 0, 1))  # before any process starts
    draws = kl_strata(T, int(timesteps_per_image)).numel() - 1 if mode == "mc" else T - 1
    tag = f"{split}_{mode}" + (f"{draws}strata" if mode == "mc" else "")
    folder = ctx.output_dir / "nll" / f"{tag}_seed{ctx.seed}{'_clip' if clip_x0 else ''}"
    plan = ShardPlan(n, int(batch_size))
    missing = [b for b in range(plan.num_shards) if not batch_file(folder, plan, b).is_file()]
    t0 = time.perf_counter()
    trainer = ctx.make_trainer()
    if missing:  # every rank sees the same files: all of them skip, or all of them predict
        options = dict(seed=ctx.seed, mode=mode, draws=draws, max_batch=int(max_batch), clip_x0=bool(clip_x0))
        trainer.predict(
            BoundWriter(ctx.net, ctx.schedule, dataset, plan, folder, **options), return_predictions=False
        )
        trainer.strategy.barrier("ddim-nll-done")
    seconds = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return None
    parts = [torch.load(batch_file(folder, plan, b), weights_only=True) for b in range(plan.num_shards)]
    terms = BoundTerms(*(torch.cat([p[f] for p in parts]) for f in BoundTerms._fields))
    computed = sum(len(plan.indices(b)) for b in missing)
    info = {
        "split": split,
        "n_images": n,
        "mode": mode,
        "timesteps_per_image": draws,  # KL terms per image (exact: all T - 1), besides L_0 and L_T
        "network_calls_per_image": draws + 1,
        "clip_x0": bool(clip_x0),
        "world_size": trainer.world_size,
        "images_computed": computed,
        "images_per_s": round(computed / seconds, 4) if computed else None,
        "terms_dir": str(folder),
    }
    return terms, info


def per_timestep_rows(terms: BoundTerms) -> list[dict[str, float]]:
    """Exact mode: per t, the mean term (bits/dim), the rate from L_T down to t, and the RMSE of x0_hat."""
    mean_terms = terms.terms.mean(0)
    prior = float(terms.prior.mean())
    rows, rate = [], prior
    T = mean_terms.numel()
    for t in reversed(range(T)):
        if t > 0:
            rate += float(mean_terms[t])
        rows.append(
            {
                "t": t,
                "term": "L_0 decoder" if t == 0 else "KL",
                "bits_per_dim": float(mean_terms[t]),
                "rate_bits_per_dim": rate,  # L_T + sum of the KL terms from T-1 down to t
                "distortion_rmse_255": math.sqrt(float(terms.mse[:, t].mean())) * BITS_TO_RMSE,
            }
        )
    return list(reversed(rows))


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    keys = list(rows[0])
    text = ",".join(keys) + "\n" + "".join(",".join(f"{r[k]}" for k in keys) + "\n" for r in rows)
    return write_text(path, text)


def _plot_terms(path: Path, rows: list[dict[str, Any]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot([r["t"] for r in rows], [r["bits_per_dim"] for r in rows])
    ax.set_yscale("log")
    ax.set_xlabel("t (0 = decoder L_0)")
    ax.set_ylabel("bound term (bits/dim)")
    ax.grid(True, which="both", alpha=0.3)
    write_figure(fig, path)
    return path


def run(
    ctx: EvalContext,
    *,
    split: Literal[SPLITS],
    n_images: Count | None,
    mode: Literal[MODES],
    timesteps_per_image: Count,
    batch_size: Count,
    max_batch: Count,
    clip_x0: bool,
) -> TaskResult | None:
    t0 = time.perf_counter()
    measured = measure(
        ctx,
        split=split,
        n_images=n_images,
        mode=mode,
        timesteps_per_image=timesteps_per_image,
        batch_size=batch_size,
        max_batch=max_batch,
        clip_x0=clip_x0,
    )
    if measured is None:
        return None
    terms, info = measured
    T = ctx.schedule.num_timesteps
    est = exact_bound(terms) if mode == "exact" else monte_carlo_bound(terms, T)
    bpd, ci = mean_and_ci(est.total)
    numbers = {
        "bits_per_dim": bpd,
        "bits_per_dim_ci95": ci,
        "prior_L_T": float(est.prior.mean()),
        "kl_sum_L_t": float(est.kl.mean()),
        "decoder_L_0": float(est.decoder.mean()),
    }
    log.info(f"NLL {bpd:.4f} +- {ci:.4f} bits/dim (95%; nll.mode={mode}, {est.total.numel()} {split} images)")
    images, tables = {}, {}
    if mode == "exact":
        rows = per_timestep_rows(terms)
        tables["nll_terms"] = write_csv(ctx.output_dir / "nll_terms.csv", rows)
        images["nll_terms"] = _plot_terms(ctx.output_dir / "nll_terms.png", rows)
    record = {
        "task": "nll",
        "checkpoint": ctx.checkpoint,
        "seed": ctx.seed,
        **info,
        **numbers,
        "wall_time_s": round(time.perf_counter() - t0, 3),
    }
    return TaskResult(record, images=images, tables=tables, numbers=numbers)
