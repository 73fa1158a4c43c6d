"""train(cfg): build data, model, callbacks, loggers and Trainer from a composed Hydra config, then fit."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ddim.checkpoints.lightning_io import AtomicCheckpointIO, remove_interrupted_saves
from ddim.cpu_threads import describe_threads, set_cpu_threads
from ddim.errors import DDIMError
from ddim.hydra_utils import instantiate_group
from ddim.io import write_json
from ddim.training.checks import check_train_config
from ddim.training.random_streams import RandomStreams
from ddim.training.run_folder import check_checkpoint_fits, check_run_folder

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit the model described by cfg; returns (and writes to metrics.json) what was measured."""
    output_dir = Path(cfg.paths.output_dir)
    check_train_config(cfg, run_dir=output_dir)
    resume_from = check_run_folder(cfg, output_dir)  # no run overwritten, a resume with steps left
    set_cpu_threads(cfg.get("cpu_threads"))
    log.info(describe_threads())
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)

    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data, _convert_="all")
    model: pl.LightningModule = hydra.utils.instantiate(cfg.model, _convert_="all")
    if tuple(datamodule.image_shape) != tuple(model.image_shape):
        raise DDIMError(
            f"The data gives images of shape {tuple(datamodule.image_shape)} but the model expects "
            f"{tuple(model.image_shape)}: set model.net.in_channels/resolution (or data.image_size) to match."
        )
    check_checkpoint_fits(model, resume_from)
    # First, so every other callback's step hooks run outside the training step's random stream.
    callbacks = [RandomStreams(cfg.get("seed")), *instantiate_group(cfg.get("callbacks"))]
    loggers = instantiate_group(cfg.get("logger"))
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath:
        remove_interrupted_saves(trainer.checkpoint_callback.dirpath)

    output_dir.mkdir(parents=True, exist_ok=True)
    if trainer.is_global_zero:
        n_params = sum(p.numel() for p in model.net.parameters())
        log.info(f"U-Net parameters: {n_params:,}; output directory: {output_dir}")
        for logger in loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    checkpointing = trainer.checkpoint_callback
    if checkpointing is not None and checkpointing.dirpath and not trainer.interrupted:
        # Step-interval checkpoints miss the final steps; end every run with a resumable last.ckpt.
        last = Path(checkpointing.dirpath) / f"{checkpointing.CHECKPOINT_NAME_LAST}.ckpt"
        trainer.save_checkpoint(last, weights_only=False)
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
        if checkpointing is not None and checkpointing.dirpath and not trainer.interrupted:
            log.info(closing_line(last, Path(trainer.default_root_dir) / "samples", data_choice()))
    return metrics


def data_choice() -> str | None:
    """The data config this run was composed with (e.g. digits): eval needs it to load the same data set.
    None outside @hydra.main (a config composed in-process)."""
    return HydraConfig.get().runtime.choices.get("data") if HydraConfig.initialized() else None


def closing_line(checkpoint: Path, samples: Path, data: str | None) -> str:
    """Where the results are and the command to run next, the last line a training run logs."""
    data_option = f" data={data}" if data else ""
    return (
        f"Training done. Checkpoint: {checkpoint}; sample grids: {samples}. Next: "
        f"python src/eval.py ckpt={checkpoint}{data_option} task=sample"
    )
