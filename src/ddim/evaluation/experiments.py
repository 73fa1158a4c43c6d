"""The DDIM/DDPM experiments besides FID, as figure/table producers on top of ddim.samplers.

Reconstruction (Table 2) runs through trainer.predict so the test set is split over all devices; the
visual experiments are small and run in one process. The sampler math is only called, never rewritten.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ddim.evaluation.generation import _Chunks
from ddim.samplers import (
    consistency,
    initial_noise,
    interpolate,
    per_sample_generators,
    progressive,
    reconstruct,
)
from ddim.schedule import Schedule

if TYPE_CHECKING:
    from ddim.evaluation.runner import Context


class _Reconstruction(pl.LightningModule):
    """Per batch of test images: encode with S steps (eta = 0 run forward), decode, accumulate squared error
    on the [0, 1] pixel scale for every S; sums are all-reduced over ranks at the end."""

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

    def predict_dataloader(self) -> DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        batches = [
            (b, s, min(s + self.batch_size, self.n_images))
            for b, s in enumerate(range(0, self.n_images, self.batch_size))
        ]
        return DataLoader(_Chunks([c for c in batches if c[0] % world == rank]), batch_size=None)

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
) -> tuple[dict[int, float], torch.Tensor]:
    """({S: per-dimension MSE on [0, 1]}, figure tensor (1 + len(S), n_show, C, H, W): originals, then each S)."""
    module = _Reconstruction(net, schedule, sequences, test_set, n_images, batch_size, n_show)
    trainer.predict(module, return_predictions=False)
    mse = {s: float(module.sse[k] / module.count[k]) for k, s in enumerate(sequences)}
    figure = torch.stack(module.examples) if module.examples else torch.zeros(0)
    return mse, figure


def _eps_fn(net: torch.nn.Module) -> Any:
    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return net(x, t)

    return eps


def _noise(ctx: Context, indices: range, device: torch.device) -> tuple[torch.Tensor, list[torch.Generator]]:
    generators = per_sample_generators(int(ctx.cfg.seed), indices)
    return initial_noise((len(indices), *ctx.image_shape), generators, device=device), generators


@torch.inference_mode()
def interpolation_grid(ctx: Context, device: torch.device) -> tuple[torch.Tensor, dict[str, Any]]:
    """Rows: pairs of latents (samples 2k, 2k+1 of the seed); columns: slerp weights 0..1, decoded with eta=0."""
    c = ctx.cfg.interpolation
    n_pairs, n_points = int(c.n_pairs), int(c.n_points)
    net = ctx.net.to(device).eval()
    z, _ = _noise(ctx, range(2 * n_pairs), device)
    seq = ctx.sampler.timestep_sequence(ctx.schedule.num_timesteps)
    grid = interpolate(
        _eps_fn(net), z[0::2], z[1::2], n_points, seq, ctx.schedule, batch_size=int(ctx.cfg.batch_size)
    )
    return grid, {"n_pairs": n_pairs, "n_points": n_points, "note": "eta=0 decoding of slerp(z0, z1, alpha)"}


@torch.inference_mode()
def consistency_grid(ctx: Context, device: torch.device) -> tuple[torch.Tensor, dict[str, Any]]:
    """Rows: samples; columns: the same x_T decoded with each S (eta = 0)."""
    c = ctx.cfg.consistency
    net = ctx.net.to(device).eval()
    x_T, _ = _noise(ctx, range(int(c.n_samples)), device)
    steps = [int(s) for s in c.steps]
    grid = consistency(_eps_fn(net), x_T, steps, ctx.sampler.skip_type, ctx.schedule)
    return grid, {"n_samples": int(c.n_samples), "steps_list": steps}


@torch.inference_mode()
def progressive_grid(ctx: Context, device: torch.device) -> tuple[torch.Tensor, dict[str, Any]]:
    """Rows: samples; columns: x0_hat along one chain of the configured sampler, every `every` steps."""
    c = ctx.cfg.progressive
    net = ctx.net.to(device).eval()
    x_T, generators = _noise(ctx, range(int(c.n_samples)), device)
    s = ctx.sampler
    seq = s.timestep_sequence(ctx.schedule.num_timesteps)
    every = int(c.every) if c.get("every") else max(1, len(seq) // 10)  # about 11 frames by default
    grid = progressive(
        _eps_fn(net),
        x_T,
        seq,
        ctx.schedule,
        every=every,
        eta=float(s.eta),
        variance=s.variance,
        clip_x0=s.clip_x0,
        generator=generators,
    )
    return grid, {"n_samples": int(c.n_samples), "every": every, "frames": int(grid.shape[1])}
