"""Every evaluation setting, checked before anything is built or written: the top-level keys of conf/eval.yaml
(EvalSettings), the sampler, the task's own options (against its `run` signature), data, schedule, trainer,
fid and loggers, and the folders the run will create. One SettingsError names the full key path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ddim.config_checks import (
    check_folder,
    check_target_group,
    check_target_node,
    check_top_level,
    check_trainer,
    choice,
    plain,
)
from ddim.diffusion.schedule import make_betas
from ddim.errors import DDIMError
from ddim.metrics.cache import check_cache_dir
from ddim.metrics.scoring import FIDSettings
from ddim.samplers import Sampler
from ddim.samplers.base import sampler_from_settings
from ddim.settings import Count, Seed, check, parameters

GROUPS = {"paths", "sampler", "schedule", "trainer", "data", "fid", "logger"}
NO_CHECKPOINT = (
    "No checkpoint given: pass ckpt=PATH (our Lightning .ckpt, an original DDPM/DDIM .ckpt/.pth, or a diffusers "
    "UNet2DModel folder), e.g. python src/eval.py ckpt=outputs/train/.../last.ckpt"
)


@dataclass(frozen=True, kw_only=True)
class EvalSettings:
    """The top-level keys of conf/eval.yaml (their defaults and meaning are there)."""

    task_name: str
    task_type: str
    ckpt: str
    use_ema: bool
    resolution: Count | None
    seed: Seed
    n_samples: Count
    batch_size: Count
    shard_size: Count
    grid_size: Count
    samples_dir: str


@dataclass(frozen=True, kw_only=True)
class CheckedEval:
    """What check_eval_config read: the settings as typed objects, ready for the run."""

    settings: EvalSettings
    sampler: Sampler
    fid: FIDSettings
    task_options: dict[str, Any]


def check_eval_config(cfg: DictConfig, folder_key: str | None = None) -> CheckedEval:
    """Raise one DDIMError for the first bad setting; folder_key names the folder a CLI run will create."""
    from ddim.evaluation.tasks import TASKS, get_task

    if OmegaConf.is_missing(cfg, "ckpt") or not cfg.get("ckpt"):
        raise DDIMError(NO_CHECKPOINT)
    task_name = str(cfg.task_type)
    run = get_task(task_name)
    top = check_top_level(cfg, EvalSettings, GROUPS | set(TASKS), "conf/eval.yaml")
    settings = EvalSettings(**top)
    # A task's options live under its name (nll:, sweep:, ...); fid and sample have none (cfg.fid is a group).
    options = (plain(cfg.get(task_name), task_name) or {}) if parameters(run) else {}
    check(run, options, task_name, f"task={task_name}")
    sampler = sampler_from_settings(plain(cfg.sampler, "sampler"))
    check(make_betas, plain(cfg.schedule, "schedule") or {}, "schedule", required=False)
    check_trainer(cfg.trainer)
    data = plain(cfg.get("data"), "data")
    if data:
        if data.get("image_size", 0) is None:  # eval.yaml's null: the checkpoint's size, set later
            del data["image_size"]
        check_target_node(data, "data", choice(cfg, "data"))
    fid_values = plain(cfg.fid, "fid")
    check(FIDSettings, fid_values, "fid", choice(cfg, "fid"))
    check_target_group(cfg.get("logger"), "logger")
    check_cache_dir(fid_values["cache_dir"])
    if folder_key is not None:
        check_folder(OmegaConf.select(cfg, folder_key), folder_key)
        if folder_key == "hydra.run.dir":
            check_folder(settings.samples_dir, "samples_dir")
    return CheckedEval(
        settings=settings, sampler=sampler, fid=FIDSettings(**fid_values), task_options=options
    )


def check_before_run(cfg: DictConfig, folder_key: str) -> None:
    """What src/eval.py checks before Hydra starts (hydra_utils.check_command_line)."""
    check_eval_config(cfg, folder_key)
