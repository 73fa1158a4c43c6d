"""The SampleGrid callback in a tiny CPU training run."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, Logger
from torch.utils.data import DataLoader

from ddim.diffusion.schedule import Schedule
from ddim.images import upscale_factor
from ddim.samplers import DDIM, initial_noise, per_sample_generators
from ddim.training.sample_grid import SampleGrid


class TinyModule(pl.LightningModule):
    """Stand-in exposing what the callback needs: eps_fn(ema), schedule, image_shape."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.ema_net = copy.deepcopy(self.net).requires_grad_(False)
        self.schedule = Schedule.from_config("linear", 100, 1e-4, 0.02)
        self.image_shape = (1, 8, 8)
        self.eval_calls: list[bool] = []

    def eps_fn(self, ema: bool = True):
        net = self.ema_net if ema else self.net

        def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            self.eval_calls.append((not self.training) and not torch.is_grad_enabled())
            return net(x)

        return eps

    def training_step(self, batch, batch_idx):
        return (self.net(batch) - batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=0.01)


class ImageLogger(Logger):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str, list, int]] = []

    name = "images"
    version = 0

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_image(self, key, images, step=None, **kwargs) -> None:
        self.images.append((key, images, step))


def fit(module: pl.LightningModule, callback: SampleGrid, root: Path, loggers, max_steps: int = 5) -> None:
    data = DataLoader(torch.rand(24, *module.image_shape) * 2 - 1, batch_size=4)
    trainer = pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        callbacks=[callback],
        logger=loggers,
        default_root_dir=root,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=data)


def test_grid_written_every_n_steps_and_at_the_end_and_sent_to_image_loggers(tmp_path):
    module = TinyModule()
    sampler = {"eta": 0.0, "steps": 5, "skip_type": "uniform", "variance": "eta", "clip_x0": False}
    callback = SampleGrid(every_n_steps=2, n_samples=4, seed=0, sampler=sampler)
    csv, images = CSVLogger(tmp_path, name="csv"), ImageLogger()
    fit(module, callback, tmp_path, [csv, images], max_steps=5)
    samples = tmp_path / "samples"  # the run directory, not the logger's versioned folder
    assert sorted(p.name for p in samples.iterdir()) == [
        "step_0000002.png",
        "step_0000004.png",
        "step_0000005.png",  # on_train_end
    ]
    assert [(key, step) for key, _, step in images.images] == [("samples", 2), ("samples", 4), ("samples", 5)]
    assert images.images[-1][1] == [str(samples / "step_0000005.png")]
    assert module.eval_calls and all(module.eval_calls)  # eval mode, no grad
    assert module.training  # restored after drawing

    # The final grid is the configured sampler on the fixed seed's x_T with the final EMA weights.
    gens = per_sample_generators(0, range(4))
    x_T = initial_noise((4, 1, 8, 8), gens)
    with torch.no_grad():
        expected = DDIM(**sampler).run(lambda x, t: module.ema_net(x), x_T, module.schedule, gens)
    expected_pixels = ((expected.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    pixels = np.asarray(Image.open(samples / "step_0000005.png"))
    k = upscale_factor(2 * 10 + 2)  # the grid is enlarged with nearest neighbour to be seen: k x k blocks
    assert pixels.shape == (k * (2 * 10 + 2), k * (2 * 10 + 2))  # 2x2 grid of 8x8, 2 px padding, grayscale
    pixels = pixels[::k, ::k]
    assert np.array_equal(pixels[12:20, 2:10], expected_pixels[2, 0].numpy())


def test_without_logger_grid_goes_to_default_root_dir(tmp_path):
    callback = SampleGrid(every_n_steps=100, n_samples=2, seed=1, sampler={"steps": 3})
    fit(TinyModule(), callback, tmp_path, False, max_steps=2)
    assert callback.last_path == tmp_path / "samples" / "step_0000002.png" and callback.last_path.exists()


def test_bad_sampler_settings_fail_before_training(tmp_path):
    callback = SampleGrid(every_n_steps=1, n_samples=2, sampler={"steps": 500})  # T = 100 here
    with pytest.raises(ValueError, match=r"sampler.steps must be an integer in \[1, 100\]"):
        fit(TinyModule(), callback, tmp_path, False, max_steps=1)
    with pytest.raises(ValueError, match="every_n_steps >= 1"):
        SampleGrid(every_n_steps=0)


def test_with_the_real_diffusion_module(tmp_path, tiny_net):
    lit = pytest.importorskip("ddim.training.module")
    module = lit.DiffusionModule(net=tiny_net, schedule={"num_timesteps": 50}, optim={"warmup_steps": 0})
    callback = SampleGrid(every_n_steps=1, n_samples=2, seed=0, sampler={"steps": 2})
    fit(module, callback, tmp_path, False, max_steps=1)
    assert (tmp_path / "samples" / "step_0000001.png").exists()


def test_hydra_callback_config_instantiates(compose_config):
    from hydra.utils import instantiate

    cfg = compose_config(["+callbacks=sample_grid", "callbacks.sample_grid.sampler.steps=20"])
    callback = instantiate(cfg.callbacks.sample_grid)
    assert isinstance(callback, SampleGrid) and callback.sampler.steps == 20 and callback.sampler.eta == 0
