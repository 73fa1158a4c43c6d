"""What every evaluation task works with: the checkpoint's network, its noise schedule, the sampler validated
against that schedule, the image shape, the run's settings, and builders for the heavier resources (Trainer,
data, metric scorer), so that tasks never read the Hydra config themselves.

Order of work, so that a mistake costs nothing: every setting is checked first (ddim.evaluation.settings),
then the checkpoint is read and the sampler checked against its schedule here, before any task starts.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from ddim.config_checks import check_folder
from ddim.diffusion.parameterization import ModelFn, ModelSpec
from ddim.diffusion.schedule import Schedule
from ddim.errors import DDIMError, user_error_in
from ddim.evaluation.launch import build_trainer, single_device
from ddim.evaluation.settings import CheckedEval, EvalSettings
from ddim.metrics.scoring import Scorer, prepare_scorer
from ddim.samplers import Sampler
from ddim.samplers.timesteps_file import file_sha256

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Generation:
    """How samples are drawn and stored: sample i uses a generator seeded by (seed, i) only."""

    n_samples: int
    batch_size: int
    shard_size: int
    grid_size: int
    samples_dir: Path


@dataclass(frozen=True, kw_only=True)
class EvalContext:
    net: ModelFn  # the network read through its parameterization: an eps function for the samplers
    schedule: Schedule
    sampler: Sampler  # checked against the schedule
    image_shape: tuple[int, int, int]  # (C, H, W) the network makes
    checkpoint: str
    output_dir: Path
    seed: int
    generation: Generation
    data_target: str | None  # the data module's class path (picks the paper's table to compare with)
    device: torch.device  # for the small single-process tasks
    make_trainer: Callable[[], pl.Trainer]
    make_datamodule: Callable[[], Any]  # shape-checked against the checkpoint
    make_scorer: Callable[[bool], Scorer | None]  # argument: is this rank 0

    def sampler_record(self, sampler: Sampler) -> dict[str, Any]:
        """The fields of metrics.json (and the sweep tables) that describe one sampler; eta, variance and
        clip_x0 are null for samplers without them (Table 1's rows are the DDIM family's)."""
        sequence = sampler.sequence(self.schedule)
        chosen = sampler.timesteps is not None or sampler.timesteps_file is not None
        return {
            "eta": getattr(sampler, "eta", None),
            "steps": len(sequence) if chosen else int(sampler.steps),
            "skip_type": ("optimized" if sampler.timesteps_file else "custom")
            if chosen
            else sampler.skip_type,
            "variance": getattr(sampler, "variance", None),
            "clip_x0": getattr(sampler, "clip_x0", None),
            "sampler": sampler.name,
            "sampler_label": sampler.label(),
            "sampler_settings": sampler.settings(),
            "nfe": sampler.nfe(self.schedule),
            "sequence": sequence,  # the timesteps visited, increasing
            "checkpoint": self.checkpoint,
            "seed": self.seed,
            "num_timesteps": self.schedule.num_timesteps,
        }

    def identity(self, sampler: Sampler) -> dict[str, Any]:
        """What decides every pixel of a samples folder (its manifest guards resuming with other settings)."""
        sampler_identity = {"name": sampler.name, **sampler.settings()}
        if sampler.timesteps_file is not None:  # the file's content, not its path, decides the pixels
            sampler_identity["sequence"] = sampler.sequence(self.schedule)
        return {
            "checkpoint": self.checkpoint,
            "sampler": sampler_identity,
            "image_shape": list(self.image_shape),
            "schedule": [
                float(self.schedule.betas[0]),
                float(self.schedule.betas[-1]),
                self.schedule.num_timesteps,
            ],
        }


def checkpoint_resolution(resolution: int | None, recorded: int | None) -> int | None:
    """resolution= is only for files that do not record their image size; a trained size is fixed."""
    if resolution is not None and recorded is not None and resolution != recorded:
        raise DDIMError(
            f"resolution={resolution} but the checkpoint's network was trained on {recorded}x{recorded} images and "
            "records it; a trained model's resolution is fixed: drop resolution=."
        )
    return resolution


def data_for_checkpoint(data_cfg: DictConfig | None, resolution: int) -> DictConfig | None:
    """eval.yaml sets data.image_size to null, meaning the checkpoint's size: data modules that resize
    (digits, image folders, ...) get it, the others drop the key. An explicit data.image_size is kept."""
    if not data_cfg or data_cfg.get("image_size", "unset") is not None:
        return data_cfg
    data_cfg = copy.deepcopy(data_cfg)
    with open_dict(data_cfg):
        params = inspect.signature(hydra.utils.get_class(data_cfg._target_)).parameters
        if "image_size" in params:
            data_cfg.image_size = resolution
        else:
            del data_cfg["image_size"]
    return data_cfg


def make_datamodule(data_cfg: DictConfig | None, image_shape: tuple[int, int, int]) -> Any:
    """The configured data module, refused when its images do not have the checkpoint's shape."""
    if not data_cfg:
        raise DDIMError("This task needs a data set: add data=cifar10 (or celeba64, digits, ...).")
    try:
        datamodule = hydra.utils.instantiate(data_cfg, _convert_="all")
    except Exception as err:
        user = user_error_in(err)
        if user is not None:
            raise user from err
        if isinstance(err.__cause__, (ValueError, FileNotFoundError)):
            raise DDIMError(f"Bad data config: {err.__cause__}") from err
        raise
    if tuple(datamodule.image_shape) != tuple(image_shape):
        raise DDIMError(
            f"The data config gives images of shape {tuple(datamodule.image_shape)} but the checkpoint's model makes "
            f"{tuple(image_shape)}. Pick the matching data (e.g. data=cifar10 for 3x32x32, data=digits for the "
            "quickstart) or fid.reference=path/to/stats.npz."
        )
    return datamodule


def load_network(settings: EvalSettings, schedule_cfg: DictConfig) -> tuple[ModelFn, dict[str, Any], str]:
    """The checkpoint's network read through its parameterization, its U-Net config and its path."""
    from ddim.checkpoints import build_unet, infer_unet_config, read_checkpoint

    path = str(Path(settings.ckpt).expanduser())
    ckpt = read_checkpoint(path, prefer_ema=settings.use_ema)
    hparams = ckpt.hyper_parameters or {}
    recorded = (hparams.get("net") or {}).get("resolution")
    resolution = checkpoint_resolution(settings.resolution, int(recorded) if recorded is not None else None)
    config = ckpt.config
    if resolution is not None and resolution != config["resolution"]:
        config = infer_unet_config(ckpt.state_dict, resolution)  # the same tensors at the given size
    unet = build_unet(ckpt.state_dict, config)
    # Checkpoints that do not carry a schedule (original DDPM/DDIM, diffusers files) use the configured one.
    schedule_args = hparams.get("schedule") or OmegaConf.to_container(schedule_cfg, resolve=True)
    try:
        schedule = Schedule.from_config(**schedule_args)
    except (TypeError, ValueError) as err:
        raise DDIMError(f"Bad noise schedule {schedule_args}: {err}") from err
    ema = {True: "EMA", False: "raw", None: "only"}[ckpt.ema]
    log.info(f"Checkpoint {path} ({ckpt.layout} layout, {ema} weights), T={schedule.num_timesteps}")
    # Read the output the way the model was trained (eps/x0/mu/v, learned variance); old files: eps.
    return ModelFn(unet, ModelSpec.from_hparams(hparams), schedule), config, path


def warn_if_searched_elsewhere(sampler: Sampler, checkpoint: str) -> None:
    """A timesteps file searched on another checkpoint is used (schedule, sampler and NFE match: a fair start
    for a fine-tuned model), with a warning that a search on this one may do better."""
    record = sampler.file_record
    if record is None or record.checkpoint_sha256 in (None, file_sha256(checkpoint)):
        return
    log.warning(
        f"sampler.timesteps_file={record.path} was searched on another checkpoint; it is used as it is, but "
        "task=optimize_timesteps on this checkpoint may find a better sequence."
    )


def load_context(cfg: DictConfig, checked: CheckedEval) -> EvalContext:
    """Read the checkpoint, build its network and schedule, check the sampler against the schedule: nothing
    is written yet except the (empty) output directory."""
    settings = checked.settings
    output_dir = Path(str(cfg.paths.output_dir))
    check_folder(output_dir, "hydra.run.dir (paths.output_dir)")
    check_folder(settings.samples_dir, "samples_dir")
    net, config, path = load_network(settings, cfg.schedule)
    sampler = checked.sampler.check_schedule(net.schedule)
    warn_if_searched_elsewhere(sampler, path)
    output_dir.mkdir(parents=True, exist_ok=True)  # Hydra makes it for CLI runs; the Python API may not
    image_shape = (int(config.get("in_channels", 3)), int(config["resolution"]), int(config["resolution"]))
    data_cfg = data_for_checkpoint(cfg.get("data"), image_shape[-1])
    datamodule = partial(make_datamodule, data_cfg, image_shape)
    scorer = partial(
        prepare_scorer,
        checked.fid,
        datamodule=datamodule,
        data_cfg=OmegaConf.to_container(data_cfg, resolve=True) if data_cfg else None,
        data_dir=cfg.paths.data_dir,
    )
    return EvalContext(
        net=net,
        schedule=net.schedule,
        sampler=sampler,
        image_shape=image_shape,
        checkpoint=path,
        output_dir=output_dir,
        seed=settings.seed,
        generation=Generation(
            n_samples=settings.n_samples,
            batch_size=settings.batch_size,
            shard_size=settings.shard_size,
            grid_size=settings.grid_size,
            samples_dir=Path(settings.samples_dir),
        ),
        data_target=data_cfg.get("_target_") if data_cfg else None,
        device=single_device(str(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))),
        make_trainer=partial(build_trainer, cfg.trainer, output_dir),
        make_datamodule=datamodule,
        make_scorer=lambda is_zero: scorer(is_zero=is_zero),
    )
