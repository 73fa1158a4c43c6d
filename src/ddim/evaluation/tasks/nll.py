"""task=nll: the variational bound of DDPM in bits/dim on the test (or train) split (DDPM Table 1: <= 3.75
on CIFAR10 test with L_simple, 3.70 trained on the true bound).

    exact: all T terms per image (T network calls per image, batched across timesteps), with the breakdown
           L_T (prior) + sum of L_{t-1} (KL) + L_0 (decoder) and every per-timestep term in nll_terms.csv.
    mc:    K uniformly drawn timesteps per image: L_T + T * mean of the K terms is an unbiased estimate of the
           image's bound; the mean over images comes with a 95% confidence interval.

Seeded per image (image i's timesteps and noise come from a generator seeded by (seed, i)), so a result does
not depend on the batch sizes; each batch of images is stored in its own file and an interrupted run resumes
from the files it finds. Single process (ctx.device).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from ddim.errors import DDIMError
from ddim.evaluation.context import EvalContext
from ddim.evaluation.reporting import TaskResult
from ddim.io import atomic_write, save_tensors, write_text
from ddim.likelihood import BoundTerms, exact_bound, is_discrete, mean_and_ci, monte_carlo_bound
from ddim.samplers import per_sample_generators

MODES = ("exact", "mc")
SPLITS = ("test", "train")
BITS_TO_RMSE = 127.5  # x0_hat errors on [-1, 1] -> the [0, 255] scale


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


def bound_for_images(
    ctx: EvalContext,
    x0: torch.Tensor,
    indices: range,
    mode: str,
    timesteps_per_image: int,
    max_batch: int,
    clip_x0: bool,
) -> BoundTerms:
    """Bound terms of a batch of images, seeded per image index."""
    from ddim.likelihood import bound_terms

    T = ctx.schedule.num_timesteps
    generators = per_sample_generators(ctx.seed, indices)
    if mode == "exact":
        timesteps = torch.arange(T).repeat(len(indices), 1)
    else:
        timesteps = torch.stack(
            [torch.randint(0, T, (timesteps_per_image,), generator=g) for g in generators]
        )
    shape = tuple(x0.shape[1:])

    def noise(i: int, k: int) -> torch.Tensor:
        return torch.randn(shape, generator=generators[i])

    net = ctx.net.to(ctx.device).eval()

    def predict(x: torch.Tensor, t: torch.Tensor):
        return net.predict(x, t, clip_x0=clip_x0)

    return bound_terms(predict, x0.to(ctx.device), timesteps, ctx.schedule, noise, max_batch=max_batch)


def measure(
    ctx: EvalContext,
    *,
    split: str,
    n_images: int | None,
    mode: str,
    timesteps_per_image: int,
    batch_size: int,
    max_batch: int,
    clip_x0: bool,
) -> tuple[BoundTerms, dict[str, Any]]:
    """The bound terms of the first n_images of the split, from (or into) one file per batch of images."""
    if mode not in MODES:
        raise DDIMError(f"nll.mode must be 'exact' (all T terms) or 'mc' (K random timesteps), got {mode!r}.")
    if mode == "mc" and int(timesteps_per_image) < 1:
        raise DDIMError(f"nll.timesteps_per_image must be >= 1, got {timesteps_per_image!r}.")
    dataset = split_dataset(ctx, split)
    n = len(dataset) if n_images is None else min(int(n_images), len(dataset))
    if n < 1:
        raise DDIMError(f"nll.n_images must be >= 1, got {n_images!r}.")
    tag = f"{split}_{mode}" + (f"{int(timesteps_per_image)}" if mode == "mc" else "")
    folder = ctx.output_dir / "nll" / f"{tag}_seed{ctx.seed}{'_clip' if clip_x0 else ''}"
    parts, computed, t0 = [], 0, time.perf_counter()
    with torch.inference_mode():
        for start in range(0, n, int(batch_size)):
            stop = min(start + int(batch_size), n)
            path = folder / f"images_{start:07d}_{stop:07d}.pt"
            if path.is_file():  # resume: this batch was measured by an earlier run with the same settings
                parts.append(BoundTerms(**torch.load(path, weights_only=True)))
                continue
            x0 = image_batch(dataset, start, stop)
            if not is_discrete(x0):
                raise DDIMError(
                    "task=nll needs 8-bit images (256 levels on [-1, 1]): the decoder term is a probability of "
                    "pixel values. This data set's values are not on those levels."
                )
            terms = bound_for_images(
                ctx, x0, range(start, stop), mode, int(timesteps_per_image), int(max_batch), bool(clip_x0)
            )
            save_tensors(terms._asdict(), path)
            parts.append(terms)
            computed += stop - start
    seconds = time.perf_counter() - t0
    terms = BoundTerms(*(torch.cat([getattr(p, f) for p in parts]) for f in BoundTerms._fields))
    info = {
        "split": split,
        "n_images": n,
        "mode": mode,
        "timesteps_per_image": ctx.schedule.num_timesteps if mode == "exact" else int(timesteps_per_image),
        "clip_x0": bool(clip_x0),
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
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path


def run(
    ctx: EvalContext,
    *,
    split: str,
    n_images: int | None,
    mode: str,
    timesteps_per_image: int,
    batch_size: int,
    max_batch: int,
    clip_x0: bool,
) -> TaskResult:
    t0 = time.perf_counter()
    terms, info = measure(
        ctx,
        split=split,
        n_images=n_images,
        mode=mode,
        timesteps_per_image=timesteps_per_image,
        batch_size=batch_size,
        max_batch=max_batch,
        clip_x0=clip_x0,
    )
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
