"""What every evaluation task works with: the checkpoint's network, its noise schedule, the sampler validated
against that schedule, the image shape, the run's settings, and builders for the heavier resources (Trainer,
data, metric scorer), so that tasks never read the Hydra config themselves.

Order of work, so that a mistake costs nothing: the config and the checkpoint are checked and the sampler is
validated here, before any task starts.
"""

from __future__ import annotations

import copy
import dataclasses
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

from ddim.diffusion.parameterization import ModelFn, ModelSpec
from ddim.diffusion.schedule import Schedule
from ddim.errors import DDIMError, user_error_in
from ddim.evaluation.launch import build_trainer, check_folder_path, single_device
from ddim.metrics.scoring import Scorer, prepare_scorer
from ddim.samplers import SamplerConfig

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
    sampler: SamplerConfig  # validated against the schedule
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

    def sampler_record(self, sampler: SamplerConfig) -> dict[str, Any]:
        """The fields of metrics.json (and the sweep tables) that describe one sampler."""
        return {
            "eta": float(sampler.eta),
            "steps": int(sampler.steps) if sampler.timesteps is None else len(sampler.timesteps),
            "skip_type": sampler.skip_type if sampler.timesteps is None else "custom",
            "variance": sampler.variance,
            "clip_x0": bool(sampler.clip_x0),
            "sampler": sampler.name,
            "sampler_label": sampler.label(),
            "nfe": sampler.nfe(self.schedule),
            "checkpoint": self.checkpoint,
            "seed": self.seed,
            "num_timesteps": self.schedule.num_timesteps,
        }

    def identity(self, sampler: SamplerConfig) -> dict[str, Any]:
        """What decides every pixel of a samples folder (its manifest guards resuming with other settings)."""
        return {
            "checkpoint": self.checkpoint,
            "sampler": sampler.to_dict(),
            "image_shape": list(self.image_shape),
            "schedule": [
                float(self.schedule.betas[0]),
                float(self.schedule.betas[-1]),
                self.schedule.num_timesteps,
            ],
        }


def sampler_from_config(node: Any) -> SamplerConfig:
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    try:
        return SamplerConfig(**values)
    except TypeError as err:
        fields = [f.name for f in dataclasses.fields(SamplerConfig)]
        raise DDIMError(f"Unknown sampler option in {sorted(values)}; valid keys are {fields}.") from err


def positive_int(cfg: DictConfig, key: str, example: int) -> int:
    value = OmegaConf.select(cfg, key)
    try:
        number = int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or number < 1 or number != value and str(number) != str(value).strip():
        raise DDIMError(f"{key} must be a positive integer, got {value!r}: pass e.g. {key}={example}.")
    return number


def checked_sampler(sampler: SamplerConfig, schedule: Schedule) -> SamplerConfig:
    """Validate, then dry-run the loop on one pixel with a zero network: step-level limits (an eta too
    large for this schedule and sequence) fail here, before a manifest or an image is written."""
    sampler = sampler.validate(schedule)
    sampler.run(lambda x, t: torch.zeros_like(x), torch.zeros(1, 1, 1, 1, dtype=torch.float64), schedule)
    return sampler


def checkpoint_resolution(cfg: DictConfig, recorded: int | None) -> int | None:
    """resolution= is only for files that do not record their image size; a trained size is fixed."""
    value = cfg.get("resolution")
    if value is None:
        return None
    try:
        resolution = (
            int(value) if not isinstance(value, bool) and str(int(value)) == str(value).strip() else 0
        )
    except (TypeError, ValueError):
        resolution = 0
    if resolution < 1:
        raise DDIMError(
            f"resolution must be a positive integer (the image size of a checkpoint that does not record it), "
            f"got {value!r}: pass e.g. resolution=32, or drop it."
        )
    if recorded is not None and resolution != recorded:
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


def load_context(cfg: DictConfig) -> EvalContext:
    """Read the checkpoint, build its network and schedule, validate the sampler: nothing is written yet
    except the (empty) output directory."""
    if OmegaConf.is_missing(cfg, "ckpt") or not cfg.get("ckpt"):
        raise DDIMError(
            "No checkpoint given: pass ckpt=PATH (our Lightning .ckpt, an original DDPM/DDIM .ckpt/.pth, or a "
            "diffusers UNet2DModel folder), e.g. python src/eval.py ckpt=outputs/train/.../last.ckpt"
        )
    output_dir = Path(str(cfg.paths.output_dir))
    generation = Generation(
        n_samples=positive_int(cfg, "n_samples", 50000),
        batch_size=positive_int(cfg, "batch_size", 256),
        shard_size=positive_int(cfg, "shard_size", 1000),
        grid_size=positive_int(cfg, "grid_size", 64),
        samples_dir=Path(str(cfg.samples_dir)),
    )
    check_folder_path(output_dir, "hydra.run.dir (paths.output_dir)")
    check_folder_path(generation.samples_dir, "samples_dir")
    from ddim.checkpoints import build_unet, infer_unet_config, read_checkpoint

    path = str(Path(str(cfg.ckpt)).expanduser())
    ckpt = read_checkpoint(path, prefer_ema=bool(cfg.get("use_ema", True)))
    recorded = ((ckpt.hyper_parameters or {}).get("net") or {}).get("resolution")
    resolution = checkpoint_resolution(cfg, int(recorded) if recorded is not None else None)
    config = ckpt.config
    if resolution is not None and resolution != config["resolution"]:
        config = infer_unet_config(ckpt.state_dict, resolution)  # the same tensors at the given size
    unet = build_unet(ckpt.state_dict, config)
    hparams = ckpt.hyper_parameters or {}
    schedule_cfg = hparams.get("schedule") or OmegaConf.to_container(cfg.schedule, resolve=True)
    try:
        schedule = Schedule.from_config(**schedule_cfg)
    except (TypeError, ValueError) as err:
        raise DDIMError(f"Bad noise schedule {schedule_cfg}: {err}") from err
    # Read the output the way the model was trained (eps/x0/mu/v, learned variance); old files: eps.
    net = ModelFn(unet, ModelSpec.from_hparams(hparams), schedule)
    sampler = checked_sampler(sampler_from_config(cfg.sampler), schedule)
    output_dir.mkdir(parents=True, exist_ok=True)  # Hydra makes it for CLI runs; the Python API may not
    ema = {True: "EMA", False: "raw", None: "only"}[ckpt.ema]
    log.info(f"Checkpoint {path} ({ckpt.layout} layout, {ema} weights), T={schedule.num_timesteps}")

    channels, resolution = int(config.get("in_channels", 3)), int(config["resolution"])
    image_shape = (channels, resolution, resolution)
    data_cfg = data_for_checkpoint(cfg.get("data"), resolution)
    datamodule = partial(make_datamodule, data_cfg, image_shape)

    def scorer(is_zero: bool) -> Scorer | None:
        return prepare_scorer(
            cfg.fid,
            is_zero=is_zero,
            datamodule=datamodule,
            data_cfg=OmegaConf.to_container(data_cfg, resolve=True) if data_cfg else None,
            data_dir=cfg.paths.data_dir,
        )

    return EvalContext(
        net=net,
        schedule=schedule,
        sampler=sampler,
        image_shape=image_shape,
        checkpoint=path,
        output_dir=output_dir,
        seed=int(cfg.seed),
        generation=generation,
        data_target=data_cfg.get("_target_") if data_cfg else None,
        device=single_device(str(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))),
        make_trainer=partial(build_trainer, cfg.trainer, output_dir),
        make_datamodule=datamodule,
        make_scorer=scorer,
    )
