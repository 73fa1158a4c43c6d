"""Training settings checked before anything is built or written: the top-level keys of conf/train.yaml
(TrainSettings), model, data, trainer, callbacks and loggers against the constructors that take them, and the
run folder. One SettingsError names the full key path and what is allowed.

`check_train_config` runs from src/train.py before Hydra creates a folder (hydra_utils.check_command_line,
through check_before_run) and at the start of `train(cfg)` for in-process callers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ddim.config_checks import (
    check_folder,
    check_target_group,
    check_target_node,
    check_top_level,
    check_trainer,
    choice,
)
from ddim.settings import Count, Seed
from ddim.training import run_folder

GROUPS = {"paths", "data", "model", "trainer", "callbacks", "logger"}


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """The top-level keys of conf/train.yaml (their defaults and meaning are there)."""

    task_name: str
    seed: Seed | None
    ckpt_path: str | None
    cpu_threads: Count | None


def check_train_config(cfg: DictConfig, run_dir: str | Path | None = None) -> TrainSettings:
    """Raise one SettingsError for the first malformed, out-of-range or unknown training setting."""
    settings = TrainSettings(**check_top_level(cfg, TrainSettings, GROUPS, "conf/train.yaml"))
    check_target_node(cfg.model, "model", choice(cfg, "model"))
    check_target_node(cfg.data, "data", choice(cfg, "data"))
    check_trainer(cfg.trainer)
    check_target_group(cfg.get("callbacks"), "callbacks")
    check_target_group(cfg.get("logger"), "logger")
    if run_dir is not None:
        check_folder(run_dir, "hydra.run.dir")
    return settings


def check_before_run(config: DictConfig, folder_key: str) -> None:
    """What src/train.py checks before Hydra starts (hydra_utils.check_command_line): the settings, then that
    a run folder holding another run is not overwritten (run_folder.check_before_run)."""
    check_train_config(config, run_dir=OmegaConf.select(config, folder_key))
    run_folder.check_before_run(config, folder_key)
