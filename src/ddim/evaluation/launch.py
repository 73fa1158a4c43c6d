"""Where evaluation runs: the predict-only Trainer, the rule that a local Hydra multirun gets one device per
job, and the single device of the small in-process tasks."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from ddim.errors import DDIMError
from ddim.io import file_in_the_way, unwritable_folder
from ddim.samplers import SamplerConfig

log = logging.getLogger(__name__)


def devices_per_node(devices: Any) -> int:
    """trainer.devices as the count a scheduler needs (SLURM tasks and GPUs per node): N, or the length of a
    list of ids; "auto" and -1 mean one, because the node's GPUs are unknown before the job lands on it
    (pass trainer.devices=N for N per node)."""
    if isinstance(devices, (list, tuple)) or (hasattr(devices, "__len__") and not isinstance(devices, str)):
        return len(devices)
    text = str(devices).strip()
    if text in ("auto", "-1"):
        return 1
    if "," in text:  # Lightning's "0,1" form
        return len([d for d in text.split(",") if d.strip()])
    try:
        count = int(text)
    except ValueError:
        raise DDIMError(
            f"trainer.devices={devices!r} is not a number of devices: pass e.g. trainer.devices=4."
        ) from None
    if count < 1:
        raise DDIMError(f"trainer.devices={devices!r}: pass a positive number, e.g. trainer.devices=4.")
    return count


def job_dir_name(sampler: Any, overrides: str) -> str:
    """A multirun job folder named by what the job does: its sampler tag plus a hash of all its overrides,
    so a second multirun into the same sweep folder (e.g. the sigma_hat row) adds folders instead of
    colliding with job 0, 1, ..., and rerunning the same job resumes its own samples."""
    try:
        values = OmegaConf.to_container(sampler, resolve=True) if isinstance(sampler, DictConfig) else sampler
        tag = SamplerConfig(**values).tag()
    except Exception:  # noqa: BLE001 - a bad sampler fails in the job itself, with its own message
        tag = "job"
    return f"{tag}-{hashlib.sha1(str(overrides).encode()).hexdigest()[:8]}"


def check_folder_path(path: Path, key: str) -> None:
    """Refuse a folder path below a regular file, or in a read-only folder, before anything is written (mkdir
    or the first file would fail mid-run, or Hydra's log file before the run starts)."""
    blocker = file_in_the_way(path)
    if blocker is not None:
        raise DDIMError(
            f"{key}={path} lies under {blocker}, which is a file, not a folder: choose another {key}."
        )
    read_only = unwritable_folder(path)
    if read_only is not None:
        raise DDIMError(
            f"{key}={path} cannot be written: {read_only} is read-only for this user. Choose a writable "
            f"{key}, or make {read_only} writable."
        )


def check_output_folder(config: DictConfig, folder_key: str) -> None:
    """The check conf/eval.yaml's CheckBeforeRun callback runs before Hydra creates the run or sweep folder."""
    check_folder_path(Path(str(OmegaConf.select(config, folder_key))), folder_key)


def register_resolvers() -> None:
    """The resolvers conf/ uses (hydra/default.yaml, hydra/launcher/submitit_slurm.yaml)."""
    for name, function in (("ddim.devices_per_node", devices_per_node), ("ddim.job_dir", job_dir_name)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)


register_resolvers()  # on import: the entry point, tests and submitit's job processes all import this package


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
