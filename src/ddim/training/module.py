"""LightningModule for DDPM training: the U-Net, its EMA copy, the objective, Adam with linear warm-up.

What the network predicts (parameterization), the reverse variance and the objective are hyper-parameters,
so a checkpoint is always read the way it was trained; the defaults (eps, fixed_large, simple) are DDPM's
L_simple model, and checkpoints from before these options load as such.

Built from plain config values only, so `DiffusionModule.load_from_checkpoint(path)` needs nothing else.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Annotated, Any, Literal

import pytorch_lightning as pl
import torch

from ddim.diffusion.forward import q_sample, sample_t
from ddim.diffusion.likelihood import is_discrete
from ddim.diffusion.objectives import (
    HISTORY_PER_TIMESTEP,
    LOSSES,
    TIMESTEP_SAMPLERS,
    NonDiscreteDataError,
    check_loss,
    check_timestep_sampler,
    loss_aware_probs,
    losses,
    needs_discrete_data,
    update_history,
)
from ddim.diffusion.parameterization import PARAMETERIZATIONS, VARIANCES, ModelFn, ModelSpec
from ddim.diffusion.schedule import Schedule, make_betas, schedule_config
from ddim.errors import DDIMError
from ddim.nets.unet import UNet
from ddim.settings import Nested, NonNegative, NonNegativeInt, Positive, Range

Beta = Annotated[float, Range(ge=0, lt=1)]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Optim:
    """Adam with DDPM's linear warm-up, lr * min(step / warmup_steps, 1); the defaults are the CIFAR10 recipe."""

    lr: Positive = 2e-4
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: Positive = 1e-8
    weight_decay: NonNegative = 0.0
    warmup_steps: NonNegativeInt = 5000

    def record(self) -> dict[str, Any]:
        """As the checkpoint's hyper-parameters store it (plain values, betas a list)."""
        return {**dataclasses.asdict(self), "betas": list(self.betas)}


def _plain(value: Any) -> Any:
    """Hydra may hand us DictConfig/ListConfig; checkpoints must hold plain containers only."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return value


def _with_output_channels(net: dict, spec: ModelSpec) -> dict:
    """The net config with the output channels the spec needs (a learned variance doubles them), so the
    stored config builds the stored weights."""
    in_channels = int(net.get("in_channels", 3))
    out = int(net.get("out_channels", in_channels))
    needed = spec.out_channels(in_channels)
    if out == needed or not spec.learned_variance:
        return net
    if out == in_channels:
        return {**net, "out_channels": needed}
    raise DDIMError(
        f"model.net.out_channels={out} does not fit model.variance={spec.variance} for {in_channels}-channel "
        f"images; set it to {needed} (or leave it equal to in_channels)."
    )


def ema_copy(net: torch.nn.Module) -> torch.nn.Module:
    """The EMA copy of net: a registered submodule, so it is saved in and restored from every checkpoint."""
    ema = copy.deepcopy(net).requires_grad_(False).eval()
    # In eval mode by design (it is averaged, never trained), so Lightning's "Found N module(s) in eval mode at
    # the start of training" is expected: silenced for exactly its module count, so any other module left in
    # eval mode still warns.
    n_modules = len(list(ema.modules()))
    warnings.filterwarnings(
        "ignore", message=rf"Found {n_modules} module\(s\) in eval mode at the start of training"
    )
    return ema


class DiffusionModule(pl.LightningModule):
    def __init__(
        self,
        net: Annotated[dict, Nested(UNet)],
        schedule: Annotated[dict | None, Nested(make_betas)] = None,
        optim: Annotated[dict | None, Nested(Optim)] = None,
        ema_decay: Annotated[float, Range(ge=0, lt=1)] = 0.9999,
        channels_last: bool = False,
        compile: bool = False,
        grad_checkpointing: bool = False,
        parameterization: Literal[PARAMETERIZATIONS] = "eps",
        variance: Literal[VARIANCES] = "fixed_large",
        loss: Literal[LOSSES] = "simple",
        timestep_sampler: Literal[TIMESTEP_SAMPLERS] = "uniform",
    ):
        super().__init__()
        net, schedule, optim = _plain(net), _plain(schedule), _plain(optim)
        self.spec = ModelSpec(parameterization, variance)
        check_loss(loss, self.spec)
        check_timestep_sampler(timestep_sampler, loss)
        net = _with_output_channels(dict(net), self.spec)
        schedule = schedule_config(**(schedule or {}))
        optim = Optim(**(optim or {})).record()
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
                "grad_checkpointing": grad_checkpointing,
                "parameterization": parameterization,
                "variance": variance,
                "loss": loss,
                "timestep_sampler": timestep_sampler,
            }
        )
        self.ema_net = ema_copy(self.net)
        self.schedule = Schedule.from_config(**schedule)
        self._data_checked = not needs_discrete_data(loss)
        if timestep_sampler == "loss_aware":
            # Recent losses per timestep; buffers so they are saved with (and resumed from) the checkpoint.
            steps = self.schedule.num_timesteps
            self.register_buffer(
                "loss_history", torch.zeros(steps, HISTORY_PER_TIMESTEP, dtype=torch.float64)
            )
            self.register_buffer("loss_history_count", torch.zeros(steps, dtype=torch.int64))
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
            self.ema_net.to(memory_format=torch.channels_last)
        # Recompute each U-Net block's activations in the backward pass (less memory at large resolutions);
        # set on the trained network only, outside its config: checkpoints are the same either way.
        self.net.grad_checkpointing = grad_checkpointing
        if compile:
            # In-place compile keeps the state_dict keys unchanged, so checkpoints stay portable.
            self.net.compile()

    @staticmethod
    def check_settings(values: dict[str, Any]) -> None:
        """The settings that must agree with each other (the loss with the variance, the output channels)."""
        spec = ModelSpec(values.get("parameterization", "eps"), values.get("variance", "fixed_large"))
        loss = values.get("loss", "simple")
        check_loss(loss, spec)
        check_timestep_sampler(values.get("timestep_sampler", "uniform"), loss)
        _with_output_channels(dict(values.get("net") or {}), spec)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        net = self.hparams["net"]
        resolution = net.get("resolution", 32)
        return (net.get("in_channels", 3), resolution, resolution)

    def eps_fn(self, ema: bool = True) -> ModelFn:
        """The network as samplers see it (an eps function; with a learned variance the ancestral sampler uses
        it too): the EMA weights by default, as in the papers' reported results."""
        return ModelFn(self.ema_net if ema else self.net, self.spec, self.schedule)

    def _images(self, batch: Any) -> torch.Tensor:
        x0 = batch[0] if isinstance(batch, (list, tuple)) else batch
        return x0.contiguous(memory_format=torch.channels_last) if self.hparams["channels_last"] else x0

    def _check_data(self, x0: torch.Tensor) -> None:
        if not self._data_checked:
            if not is_discrete(x0):
                raise NonDiscreteDataError(
                    f"model.loss={self.hparams['loss']} includes the discretized decoder likelihood, which needs "
                    "8-bit data (256 levels on [-1, 1]), but this data set's values are not on those levels; "
                    "train it with model.loss=simple or mse_mu, or use an 8-bit image data set."
                )
            self._data_checked = True

    def _timesteps(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """t for each example, and the importance weights 1 / (T p_t) when t is not uniform."""
        steps = self.schedule.num_timesteps
        probs = None
        if self.hparams.get("timestep_sampler", "uniform") == "loss_aware":
            probs = loss_aware_probs(self.loss_history, self.loss_history_count)
        if probs is None:
            return sample_t(batch_size, steps, device), None
        probs = probs.to(device)
        t = torch.multinomial(probs, batch_size, replacement=True)
        return t, (1.0 / (steps * probs[t])).float()

    def objective(
        self, net: torch.nn.Module, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """Per-example loss of the configured objective: one network forward."""
        x_t = q_sample(x0, t, noise, self.schedule.alphas_cumprod)
        return losses(
            net(x_t, t), x0, x_t, noise, t, self.schedule, self.spec, self.hparams.get("loss", "simple")
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x0 = self._images(batch)
        self._check_data(x0)
        t, weights = self._timesteps(x0.shape[0], x0.device)
        noise = torch.randn_like(x0)
        per_example = self.objective(self.net, x0, t, noise)
        loss = per_example.mean() if weights is None else (per_example * weights).mean()
        if hasattr(self, "loss_history"):
            t_all, values = t, per_example.detach()
            if self.trainer.world_size > 1:
                t_all, values = self.all_gather(t).reshape(-1), self.all_gather(values).reshape(-1)
            update_history(self.loss_history, self.loss_history_count, t_all.cpu(), values.cpu())
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], prog_bar=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x0 = self._images(batch)
        # Fixed t and noise per batch index so the validation loss is comparable across evaluations.
        gen = torch.Generator(device="cpu").manual_seed(batch_idx)
        t = sample_t(x0.shape[0], self.schedule.num_timesteps, generator=gen).to(x0.device)
        noise = torch.randn(x0.shape, generator=gen).to(x0)
        loss = self.objective(self.ema_net, x0, t, noise).mean()
        self.log("val/loss_ema", loss, prog_bar=True, sync_dist=True)
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # Here, once per optimizer step, and before any callback's on_train_batch_end: a checkpoint saved
        # there must hold the EMA of the weights it holds, or a resumed run misses one update.
        with torch.no_grad():
            ema_params = list(self.ema_net.parameters())
            torch._foreach_lerp_(
                ema_params, [p.detach() for p in self.net.parameters()], 1.0 - self.hparams["ema_decay"]
            )

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
