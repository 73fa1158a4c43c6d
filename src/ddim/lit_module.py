"""LightningModule for DDPM training: the epsilon U-Net, its EMA copy, L_simple, Adam with linear warm-up.

Built from plain config values only, so `DiffusionModule.load_from_checkpoint(path)` needs nothing else.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch

from ddim.diffusion import l_simple, sample_t
from ddim.nets.unet import UNet
from ddim.schedule import Schedule

DEFAULT_SCHEDULE = {"kind": "linear", "num_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
DEFAULT_OPTIM = {"lr": 2e-4, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0, "warmup_steps": 5000}


def _plain(value: Any) -> Any:
    """Hydra may hand us DictConfig/ListConfig; checkpoints must hold plain containers only."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return value


class DiffusionModule(pl.LightningModule):
    def __init__(
        self,
        net: dict,
        schedule: dict | None = None,
        optim: dict | None = None,
        ema_decay: float = 0.9999,
        channels_last: bool = False,
        compile: bool = False,
    ):
        super().__init__()
        net, schedule, optim = _plain(net), _plain(schedule), _plain(optim)
        schedule = {**DEFAULT_SCHEDULE, **(schedule or {})}
        optim = {**DEFAULT_OPTIM, **(optim or {})}
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}.")
        self.net = UNet(**net)
        self.save_hyperparameters(
            {
                "net": self.net.config,  # complete: the network is rebuilt from it, never guessed
                "schedule": schedule,
                "optim": optim,
                "ema_decay": ema_decay,
                "channels_last": channels_last,
                "compile": compile,
            }
        )
        # The EMA copy is a registered submodule so it is saved in, and restored from, every checkpoint.
        self.ema_net = copy.deepcopy(self.net).requires_grad_(False).eval()
        self.schedule = Schedule.from_config(**schedule)
        self._ema_updated_at_step = -1
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
            self.ema_net.to(memory_format=torch.channels_last)
        if compile:
            # In-place compile keeps the state_dict keys unchanged, so checkpoints stay portable.
            self.net.compile()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        net = self.hparams["net"]
        resolution = net.get("resolution", 32)
        return (net.get("in_channels", 3), resolution, resolution)

    def eps_fn(self, ema: bool = True) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The network sampling uses: the EMA weights by default, as in the papers' reported results."""
        return self.ema_net if ema else self.net

    def _images(self, batch: Any) -> torch.Tensor:
        x0 = batch[0] if isinstance(batch, (list, tuple)) else batch
        return x0.contiguous(memory_format=torch.channels_last) if self.hparams["channels_last"] else x0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = l_simple(self.net, self._images(batch), self.schedule.alphas_cumprod)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], prog_bar=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x0 = self._images(batch)
        # Fixed t and noise per batch index so the validation loss is comparable across evaluations.
        gen = torch.Generator(device="cpu").manual_seed(batch_idx)
        t = sample_t(x0.shape[0], self.schedule.num_timesteps, generator=gen).to(x0.device)
        noise = torch.randn(x0.shape, generator=gen).to(x0)
        loss = l_simple(self.ema_net, x0, self.schedule.alphas_cumprod, t=t, noise=noise)
        self.log("val/loss_ema", loss, prog_bar=True, sync_dist=True)
        return loss

    @torch.no_grad()
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Update once per optimizer step (not per micro-batch under gradient accumulation).
        if self.global_step == self._ema_updated_at_step:
            return
        self._ema_updated_at_step = self.global_step
        ema_params = list(self.ema_net.parameters())
        params = [p.detach() for p in self.net.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - self.hparams["ema_decay"])

    def configure_optimizers(self) -> dict:
        optim = self.hparams["optim"]
        optimizer = torch.optim.Adam(
            self.net.parameters(),
            lr=optim["lr"],
            betas=tuple(optim["betas"]),
            eps=optim["eps"],
            weight_decay=optim["weight_decay"],
        )
        warmup = int(optim["warmup_steps"])
        # DDPM: lr * min(step / warmup, 1), evaluated per optimizer step.
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(step / warmup, 1.0) if warmup > 0 else 1.0
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
