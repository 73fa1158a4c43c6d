"""Where evaluation runs: the predict-only Trainer, the rule that a local Hydra multirun gets one device per
job, and the single device of the small in-process tasks."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from ddim.errors import DDIMError

log = logging.getLogger(__name__)


def build_trainer(trainer_cfg: DictConfig, output_dir: Path) -> pl.Trainer:
    """The configured Trainer for predict-only work: no logger/checkpoints, and no DistributedSampler (shards
    are split by rank explicitly, so nothing is padded or generated twice)."""
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    devices = devices_for_launcher(OmegaConf.select(trainer_cfg, "devices", default="auto"))
    try:
        return hydra.utils.instantiate(
            trainer_cfg,
            devices=devices,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            use_distributed_sampler=False,
            default_root_dir=str(output_dir),
        )
    except Exception as err:
        cause = err.__cause__ or err
        # e.g. accelerator=gpu on a machine without one, an unknown strategy or precision
        if isinstance(cause, (MisconfigurationException, ValueError, TypeError)):
            raise DDIMError(f"Bad trainer settings ({cause}); check trainer.* in the command.") from err
        raise


def devices_for_launcher(devices: Any) -> Any:
    """Hydra's local multirun runs jobs one after another in one process, where DDP cannot start; on one
    machine the multirun gets one device per job, and the single-job grid (task=sweep) is the DDP route."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        local_multirun = hc.mode == RunMode.MULTIRUN and "BasicLauncher" in str(
            hc.launcher.get("_target_", "")
        )
    except (ValueError, ImportError):
        local_multirun = False
    if not local_multirun:
        return devices
    many = (
        devices == -1
        or (isinstance(devices, int) and devices > 1)
        or (isinstance(devices, list) and len(devices) > 1)
    )
    if many or (isinstance(devices, str) and devices not in ("auto", "1")):
        raise DDIMError(
            f"trainer.devices={devices} in a local Hydra multirun: DDP cannot start inside Hydra's local launcher. "
            "Use task=sweep sweep.etas=[...] sweep.steps=[...] trainer.devices=N (one DDP job over the grid), "
            "or hydra/launcher=submitit_slurm, or trainer.devices=1."
        )
    if devices == "auto":
        log.info("Local multirun: one device per job (use task=sweep for a multi-GPU grid).")
        return 1
    return devices


def single_device(accelerator: str) -> torch.device:
    """For the small in-process tasks (interpolation, consistency, progressive): the first GPU if allowed."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")
