"""Training settings checked before anything is built or written: one message naming the key and the fix.

`check_train_config` runs twice: from a Hydra callback (`check_before_run`) before Hydra creates the run directory (so a bad
command line leaves nothing behind) and at the start of `train(cfg)` (for in-process callers).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from ddim.errors import DDIMError
from ddim.io import file_in_the_way


class TrainConfigError(DDIMError, ValueError):
    """A training setting is malformed or out of range; the message names it and a valid value."""


# key: (what it must be, a valid example). "count" = integer >= 1; "steps" = integer >= -1 (-1: no limit);
# "positive"/"non-negative" = number; "fraction" = number in [0, 1); "interval" = integer >= 1 or fraction
# in (0, 1]; "limit" = integer >= 0 or fraction in [0, 1].
_RULES: dict[str, tuple[str, str]] = {
    "model.optim.lr": ("positive", "2e-4"),
    "model.optim.eps": ("positive", "1e-8"),
    "model.optim.weight_decay": ("non-negative", "0"),
    "model.optim.warmup_steps": ("non-negative integer", "5000"),
    "model.ema_decay": ("fraction", "0.9999"),
    "trainer.max_steps": ("steps", "800000"),
    "trainer.max_epochs": ("steps", "-1"),
    "trainer.log_every_n_steps": ("count", "50"),
    "trainer.accumulate_grad_batches": ("count", "1"),
    "trainer.val_check_interval": ("interval", "5000"),
    "trainer.limit_val_batches": ("limit", "8"),
    "trainer.gradient_clip_val": ("non-negative", "1.0"),
    "seed": ("integer", "0"),
    "cpu_threads": ("count", "1"),
}

_WORDING = {
    "positive": "a number > 0",
    "non-negative": "a number >= 0",
    "non-negative integer": "an integer >= 0",
    "fraction": "a number in [0, 1)",
    "steps": "an integer >= -1 (-1 means no limit)",
    "count": "an integer >= 1",
    "interval": "an integer >= 1 (steps) or a fraction of an epoch in (0, 1]",
    "limit": "an integer >= 0 (batches) or a fraction in [0, 1]",
    "integer": "an integer",
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _valid(kind: str, v: Any) -> bool:
    checks = {
        "positive": lambda: _is_number(v) and v > 0,
        "non-negative": lambda: _is_number(v) and v >= 0,
        "non-negative integer": lambda: _is_int(v) and v >= 0,
        "fraction": lambda: _is_number(v) and 0 <= v < 1,
        "steps": lambda: _is_int(v) and v >= -1,
        "count": lambda: _is_int(v) and v >= 1,
        "interval": lambda: (_is_int(v) and v >= 1) or (isinstance(v, float) and 0 < v <= 1),
        "limit": lambda: (_is_int(v) and v >= 0) or (isinstance(v, float) and 0 <= v <= 1),
        "integer": lambda: _is_int(v),
    }
    return checks[kind]()


def check_run_directory(run_dir: str | Path) -> None:
    """The run directory must be creatable: no part of its path may be an existing regular file."""
    blocker = file_in_the_way(run_dir)
    if blocker is not None:
        raise TrainConfigError(
            f"The run directory {run_dir} cannot be created: {blocker} is a file, not a folder. "
            "Choose another run directory, e.g. hydra.run.dir=outputs/my_run."
        )


def check_train_config(cfg: DictConfig, run_dir: str | Path | None = None) -> None:
    """Raise one TrainConfigError for the first malformed or out-of-range training setting."""
    for key, (kind, example) in _RULES.items():
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is None or _valid(kind, value):
            continue
        raise TrainConfigError(
            f"{key}={value!r} is invalid: it must be {_WORDING[kind]}, e.g. {key}={example}."
        )
    if run_dir is not None:
        check_run_directory(run_dir)


def instantiate_data(cfg: DictConfig) -> pl.LightningDataModule:
    """The data module; a setting it does not take means the data and the rest of the config disagree."""
    try:
        return hydra.utils.instantiate(cfg.data, _convert_="all")
    except InstantiationException as err:
        unexpected = re.search(r"unexpected keyword argument '(\w+)'", str(err))
        if unexpected is None:
            raise
        key = unexpected.group(1)
        net = cfg.model.get("net", {})
        raise DDIMError(
            f"data.{key}={cfg.data.get(key)!r} is not a setting of {cfg.data._target_.rsplit('.', 1)[-1]}: the "
            f"config was written for other data (its model expects {net.get('in_channels')}-channel "
            f"{net.get('resolution')}x{net.get('resolution')} images), so model and data disagree. Keep the "
            "experiment's own data (drop the data=... override) or pick the experiment made for this data "
            "(e.g. experiment=cifar10 for data=cifar10)."
        ) from err


def check_before_run(config: DictConfig, folder_key: str) -> None:
    """The check conf/train.yaml's CheckBeforeRun callback runs before Hydra creates the run folder."""
    check_train_config(config, run_dir=OmegaConf.select(config, folder_key))
    instantiate_data(config)  # cheap: data modules read nothing before setup()
