"""task=reconstruction (DDIM Table 2): encode test images to x_T with S deterministic steps (eta = 0 run
forward), decode with the same S, and report the per-dimension MSE on the [0, 1] scale for every S.

Runs through trainer.predict so the test set is split over all devices; sums are all-reduced at the end.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ddim.diffusion.schedule import Schedule
from ddim.evaluation.context import EvalContext
from ddim.evaluation.generation import Chunks
from ddim.evaluation.reports.results import TaskResult
from ddim.evaluation.reports.tables import write_table2
from ddim.evaluation.tasks.nll import split_dataset
from ddim.images import raw_grid_path, save_labeled_grid
from ddim.samplers import reconstruct
from ddim.settings import Count, NonNegativeInt


class _Reconstruction(pl.LightningModule):
    """Per batch of test images: encode, decode and accumulate the squared error for every S."""

    def __init__(
        self,
        net: torch.nn.Module,
        schedule: Schedule,
        sequences: dict[int, torch.Tensor],
        test_set: Dataset,
        n_images: int,
        batch_size: int,
        n_show: int,
    ) -> None:
        super().__init__()
        self.net = net
        self.schedule = schedule
        self.sequences = sequences
        self.test_set = test_set
        self.n_images = n_images
        self.batch_size = batch_size
        self.n_show = n_show
        self.sse = torch.zeros(len(sequences), dtype=torch.float64)
        self.count = torch.zeros(len(sequences), dtype=torch.float64)
        self.examples: list[torch.Tensor] = []
        self.shown: list[int] = []  # test-set indices of the figure's columns

    def predict_dataloader(self) -> DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        batches = [
            (b, s, min(s + self.batch_size, self.n_images))
            for b, s in enumerate(range(0, self.n_images, self.batch_size))
        ]
        return DataLoader(Chunks([c for c in batches if c[0] % world == rank]), batch_size=None)

    def eps_fn(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        _, start, stop = (int(v) for v in batch)
        x0 = torch.stack([self._image(i) for i in range(start, stop)]).to(self.device)
        have = self.examples[0].shape[0] if self.examples else 0
        take = min(self.n_show - have, x0.shape[0]) if self.trainer.is_global_zero else 0
        shown = [x0[:take].cpu()]
        for k, seq in enumerate(self.sequences.values()):
            rec = reconstruct(self.eps_fn, x0, seq, self.schedule)
            # Pixel scale [0, 1]; the decoded image is clipped to the valid range like any rendered image.
            err = ((rec.clamp(-1, 1) - x0) / 2).double().pow(2)
            self.sse[k] += err.sum().cpu()
            self.count[k] += err.numel()
            shown.append(rec[:take].cpu())
        if take > 0:  # rank 0 keeps the first n_show images it sees for the figure
            self.shown += range(start, start + take)
            self.examples = (
                shown if not self.examples else [torch.cat(p) for p in zip(self.examples, shown, strict=True)]
            )
        return None

    def _image(self, i: int) -> torch.Tensor:
        item = self.test_set[i]
        return item[0] if isinstance(item, (list, tuple)) else item

    def on_predict_end(self) -> None:
        if self.trainer.world_size > 1:
            totals = self.all_gather(torch.stack([self.sse, self.count]).to(self.device))
            self.sse, self.count = (t.cpu() for t in totals.sum(dim=0))


def reconstruction_mse(
    trainer: pl.Trainer,
    net: torch.nn.Module,
    schedule: Schedule,
    sequences: dict[int, torch.Tensor],
    test_set: Dataset,
    n_images: int,
    batch_size: int,
    n_show: int = 8,
) -> tuple[dict[int, float], torch.Tensor, list[int]]:
    """({S: per-dimension MSE on [0, 1]}, figure tensor (1 + len(S), n_show, C, H, W): originals, then each S,
    the test-set index of each column)."""
    module = _Reconstruction(net, schedule, sequences, test_set, n_images, batch_size, n_show)
    trainer.predict(module, return_predictions=False)
    mse = {s: float(module.sse[k] / module.count[k]) for k, s in enumerate(sequences)}
    figure = torch.stack(module.examples) if module.examples else torch.zeros(0)
    return mse, figure, module.shown


def spaced_sequences(ctx: EvalContext, steps: Sequence[Count]) -> dict[int, torch.Tensor]:
    """The sampler's spacing at each S (an explicit sequence or file is dropped, S varies); encoding and
    decoding are DDIM's (eta = 0), as in Table 2."""
    return {
        int(s): torch.tensor(
            dataclasses.replace(ctx.sampler, steps=int(s), timesteps=None, timesteps_file=None).sequence(
                ctx.schedule
            )
        )
        for s in steps
    }


def run(
    ctx: EvalContext,
    *,
    steps: Sequence[Count],
    n_images: Count | None,
    batch_size: Count | None,
    n_show: NonNegativeInt,
) -> TaskResult | None:
    """n_images: null = the whole test set; batch_size: null = the run's batch_size."""
    sequences = spaced_sequences(ctx, steps)
    test_set = split_dataset(ctx, "test", "reconstruction")
    n = len(test_set) if n_images is None else min(int(n_images), len(test_set))
    trainer = ctx.make_trainer()
    t0 = time.perf_counter()
    mse, examples, shown = reconstruction_mse(
        trainer,
        ctx.net,
        ctx.schedule,
        sequences,
        test_set,
        n,
        int(batch_size or ctx.generation.batch_size),
        int(n_show),
    )
    if not trainer.is_global_zero:
        return None
    paths = write_table2(mse, ctx.output_dir, n)
    figure = ctx.output_dir / "reconstruction.png"
    if shown:
        save_labeled_grid(
            examples,
            figure,
            ["original"] + [f"S={s}" for s in sequences],
            [f"test #{i}" for i in shown],
            f"encoded to x_T and decoded with S steps (DDIM eta 0, {ctx.sampler.spacing()} spacing)",
            raw_path=raw_grid_path(figure),
        )
    record = {
        "task": "reconstruction",
        "checkpoint": ctx.checkpoint,
        "n_images": n,
        "skip_type": ctx.sampler.skip_type,
        "mse": {str(s): v for s, v in mse.items()},
        "rows_of_figure": ["original"] + [f"S={s}" for s in sequences],
        "columns_of_figure": shown,  # test-set indices (n_show = 0: no figure)
        "wall_time_s": round(time.perf_counter() - t0, 3),
        "table": {k: str(v) for k, v in paths.items()},
    }
    return TaskResult(
        record,
        images={"reconstruction": figure} if shown else {},
        tables={"table2": paths["table2.csv"]},
        numbers={f"mse_S{s}": v for s, v in mse.items()},
    )
