"""Hydra helpers shared by training and evaluation (kept below both so neither imports the other)."""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group holding name -> {_target_: ...} (callbacks, loggers)."""
    if not group:
        return []
    return [
        hydra.utils.instantiate(conf, _convert_="all")
        for conf in group.values()
        if conf and "_target_" in conf
    ]
