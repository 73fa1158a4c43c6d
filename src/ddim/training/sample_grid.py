"""A Lightning callback that draws a fixed-seed sample grid with the EMA weights during training."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from ddim.images import make_grid, save_grid
from ddim.samplers import Sampler, SamplerError, initial_noise, per_sample_generators
from ddim.samplers.base import sampler_from_settings
from ddim.settings import Checked, Count, Seed

log = logging.getLogger(__name__)


def grid_sampler(settings: Mapping[str, Any], key: str) -> Sampler:
    """The grid's sampler; a mapping without _target_ (the Python API) means the DDIM family (conf/ composes
    conf/sampler/ddim.yaml, so the settings are named in one place)."""
    return sampler_from_settings({"_target_": "ddim.samplers.ddim.DDIM", **dict(settings)}, key)


class SampleGrid(pl.Callback):
    """Every `every_n_steps` optimizer steps (and at the end of training) sample `n_samples` images with the
    configured sampler from the same x_T and noise (seed), so successive grids show training progress only.

    The module must expose `eps_fn(ema=True)`, `schedule` and `image_shape`. The grid is written to
    <trainer.default_root_dir>/samples/step_XXXXXXX.png (the run directory) on rank 0 and sent to loggers
    that take images (wandb's log_image, TensorBoard's add_image); other loggers are skipped.
    """

    def __init__(
        self,
        every_n_steps: Count = 5000,
        n_samples: Count = 64,
        seed: Seed = 0,
        sampler: Annotated[Mapping[str, Any] | None, Checked(grid_sampler)] = None,
        nrow: Count | None = None,
    ) -> None:
        if int(every_n_steps) < 1 or int(n_samples) < 1:
            raise SamplerError(
                f"sample_grid needs every_n_steps >= 1 and n_samples >= 1, got {every_n_steps} and {n_samples}."
            )
        self.every_n_steps = int(every_n_steps)
        self.n_samples = int(n_samples)
        self.seed = int(seed)
        self.sampler = grid_sampler(sampler or {}, "callbacks.sample_grid.sampler")
        self.nrow = nrow or math.ceil(math.sqrt(self.n_samples))
        self.last_path: Path | None = None
        self._last_step = -1

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Fail before training starts, not after the first N steps.
        self.sampler.check_schedule(pl_module.schedule)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self._draw(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self._draw(trainer, pl_module)

    @torch.no_grad()
    def sample(self, pl_module: pl.LightningModule) -> torch.Tensor:
        """The grid's images in [-1, 1]; CPU generators make them independent of the device."""
        generators = per_sample_generators(self.seed, range(self.n_samples))
        shape = (self.n_samples, *pl_module.image_shape)
        x_T = initial_noise(shape, generators, device=pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        try:
            return self.sampler.run(pl_module.eps_fn(ema=True), x_T, pl_module.schedule, generator=generators)
        finally:
            pl_module.train(was_training)

    def _draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        self._last_step = step
        # The run directory, not the logger's versioned folder, so grids sit beside checkpoints/.
        root = Path(trainer.default_root_dir)
        if not trainer.is_global_zero:
            return
        images = self.sample(pl_module)
        path = save_grid(images, root / "samples" / f"step_{step:07d}.png", nrow=self.nrow)
        self.last_path = path
        for logger in trainer.loggers:
            try:
                if hasattr(logger, "log_image"):
                    logger.log_image(key="samples", images=[str(path)], step=step)
                elif isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_image("samples", make_grid(images, nrow=self.nrow), step)
            except Exception as err:  # a logging failure must not stop training
                log.warning("Could not log the sample grid to %s: %s", type(logger).__name__, err)
