"""Hydra helpers shared by training and evaluation (kept below both so neither imports the other)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ddim.errors import user_error_in


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group holding name -> {_target_: ...} (callbacks, loggers)."""
    if not group:
        return []
    return [
        hydra.utils.instantiate(conf, _convert_="all")
        for conf in group.values()
        if conf and "_target_" in conf
    ]


def run_reporting_user_errors(task: Callable[[DictConfig], Any], cfg: DictConfig, log: logging.Logger) -> Any:
    """task(cfg) as an entry point runs it: a user error is one logged line and exit 2, no traceback.

    In a multirun the other jobs go on (e.g. the rest of an ablation grid or an evaluation sweep): the failed
    job returns {"failed": message} instead, which the sweep table shows as '-'. Anything else is a bug and
    keeps its traceback.
    """
    try:
        return task(cfg)
    except Exception as exc:
        user_error = user_error_in(exc)
        if user_error is None:
            raise
        log.error(str(user_error))
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return {"failed": str(user_error)}
        sys.exit(2)
