"""train(cfg): build data, model, callbacks, loggers and Trainer from a composed Hydra config, then fit."""

from __future__ import annotations

import logging
import time
import zipfile
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from ddim.errors import DDIMError
from ddim.hydra_utils import instantiate_group
from ddim.io import write_json

log = logging.getLogger(__name__)


def resolve_resume_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """None, an explicit checkpoint file, or "last" (checkpoints/last.ckpt of this run directory)."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise DDIMError(
                f"ckpt_path=last but {last} does not exist. To resume a run, point Hydra at its directory: "
                "hydra.run.dir=<that run's directory> ckpt_path=last, or pass ckpt_path=/path/to/file.ckpt."
            )
        ckpt_path = str(last)
    path = Path(ckpt_path)
    if not path.is_file():
        raise DDIMError(
            f"Checkpoint not found: {path}. Pass ckpt_path=/path/to/file.ckpt (or ckpt_path=last)."
        )
    # torch.save writes a zip archive; a truncated or foreign file fails here instead of deep inside torch.
    if not zipfile.is_zipfile(path):
        raise DDIMError(
            f"{path} is not a readable PyTorch checkpoint (corrupt, truncated, or another format). "
            "Resume from an intact checkpoint, e.g. checkpoints/last.ckpt of the run."
        )
    return str(path)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the model described by cfg; returns (and writes to metrics.json) what was measured."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    resume_from = resolve_resume_path(cfg.get("ckpt_path"), output_dir)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)

    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data, _convert_="all")
    model: pl.LightningModule = hydra.utils.instantiate(cfg.model, _convert_="all")
    if tuple(datamodule.image_shape) != tuple(model.image_shape):
        raise DDIMError(
            f"The data gives images of shape {tuple(datamodule.image_shape)} but the model expects "
            f"{tuple(model.image_shape)}: set model.net.in_channels/resolution (or data.image_size) to match."
        )
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    if trainer.is_global_zero:
        n_params = sum(p.numel() for p in model.net.parameters())
        log.info(f"U-Net parameters: {n_params:,}; output directory: {output_dir}")
        for logger in loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from)
    checkpointing = trainer.checkpoint_callback
    if checkpointing is not None and checkpointing.dirpath and not trainer.interrupted:
        # Step-interval checkpoints miss the final steps; end every run with a resumable last.ckpt.
        trainer.save_checkpoint(Path(checkpointing.dirpath) / f"{checkpointing.CHECKPOINT_NAME_LAST}.ckpt")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    metrics.update(
        global_step=trainer.global_step,
        world_size=trainer.world_size,
        wall_time_s=round(time.perf_counter() - start, 2),
        parameters=sum(p.numel() for p in model.net.parameters()),
        resumed_from=resume_from,
    )
    if trainer.is_global_zero:
        write_json(output_dir / "metrics.json", metrics)
    return metrics
