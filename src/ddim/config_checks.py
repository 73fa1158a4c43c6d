"""The settings checks training and evaluation share, on a composed config: nodes that name a `_target_`
(checked against its constructor), the Trainer (with the ranges Lightning leaves unstated), loggers and
callbacks, the run folder, and the top level. Each raises one SettingsError naming the full key path."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ddim.io import file_in_the_way, unwritable_folder
from ddim.settings import Range, SettingsError, check

# Trainer keys whose valid range Lightning's annotations do not say (they are checked deep inside it).
TRAINER_RANGES: dict[str, Any] = {
    "max_steps": Annotated[int, Range(ge=-1)],
    "max_epochs": Annotated[int | None, Range(ge=-1)],
    "log_every_n_steps": Annotated[int | None, Range(ge=1)],
    "accumulate_grad_batches": Annotated[int, Range(ge=1)],
    "val_check_interval": Annotated[int, Range(ge=1)] | Annotated[float, Range(gt=0, le=1)] | None,
    "limit_val_batches": Annotated[int, Range(ge=0)] | Annotated[float, Range(ge=0, le=1)] | None,
    "gradient_clip_val": Annotated[float | None, Range(ge=0)],
    "num_nodes": Annotated[int, Range(ge=1)],
    "devices": Annotated[int, Range(ge=1)] | Annotated[int, Range(ge=-1, le=-1)] | str | list[int],
    "check_val_every_n_epoch": Annotated[int | None, Range(ge=1)],
    "num_sanity_val_steps": Annotated[int | None, Range(ge=-1)],
}
# The same for the Lightning callbacks conf/callbacks/ uses, by _target_.
TARGET_RANGES: dict[str, dict[str, Any]] = {
    "pytorch_lightning.callbacks.ModelCheckpoint": {
        "every_n_train_steps": Annotated[int | None, Range(ge=0)],
        "every_n_epochs": Annotated[int | None, Range(ge=0)],
        "save_top_k": Annotated[int, Range(ge=-1)],
    },
    "pytorch_lightning.callbacks.TQDMProgressBar": {"refresh_rate": Annotated[int, Range(ge=0)]},
}
GPU_ACCELERATORS = ("gpu", "cuda")


def plain(node: Any, key: str) -> Any:
    """A config node as plain containers with interpolations resolved; a failed interpolation is one line."""
    try:
        return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    except OmegaConfBaseException as err:
        first = str(err).strip().splitlines()[0]
        raise SettingsError(f"{key} cannot be read: {first}") from None


def value_of(cfg: DictConfig, key: str) -> Any:
    """cfg[key] as plain values, resolved; a failed interpolation is one line naming the key."""
    try:
        return plain(cfg[key], key)
    except OmegaConfBaseException as err:
        first = str(err).strip().splitlines()[0]
        raise SettingsError(f"{key} cannot be read: {first}") from None


def target_of(node: Mapping[str, Any], key: str) -> Callable[..., Any]:
    """The class or function a node's `_target_` names, imported (not called)."""
    target = str(node.get("_target_", ""))
    module, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise SettingsError(f"{key}._target_={target} cannot be imported ({err}).") from None


def check_target_node(
    node: Any, key: str, what: str | None = None, extra: Mapping[str, Any] | None = None
) -> None:
    """A node with a `_target_`: every other key must be a parameter of it, of the annotated type."""
    values = plain(node, key)
    if values is None:
        return
    if not isinstance(values, Mapping) or "_target_" not in values:
        raise SettingsError(f"{key} must be a mapping with a _target_, got {values!r}.")
    ranges = {**TARGET_RANGES.get(str(values["_target_"]), {}), **(extra or {})}
    check(target_of(values, key), values, key, what or key, extra=ranges, required=False)


def check_target_group(group: Any, key: str) -> None:
    """callbacks / logger: name -> node with a _target_ (or null to switch it off)."""
    for name, node in (plain(group, key) or {}).items():
        if node:
            check_target_node(node, f"{key}.{name}")


def check_trainer(node: Any, key: str = "trainer") -> None:
    check_target_node(node, key, extra=TRAINER_RANGES)
    accelerator = str(plain(node, key).get("accelerator", "auto"))
    if accelerator in GPU_ACCELERATORS and not torch.cuda.is_available():
        raise SettingsError(
            f"{key}.accelerator={accelerator} but this machine has no usable GPU (torch.cuda.is_available() is "
            f"false): use {key}.accelerator=cpu, or auto."
        )


def choice(cfg: DictConfig, group: str) -> str:
    """How a group was chosen, for messages ("data=digits"); the group's name outside a Hydra run."""
    choices = OmegaConf.select(cfg, "hydra.runtime.choices", default=None) or {}
    return f"{group}={choices[group]}" if group in choices else group


def check_folder(path: Any, key: str) -> None:
    """A folder the run will create must not lie under a regular file or in a read-only folder (mkdir, the
    first file or Hydra's log would fail mid-run)."""
    blocker = file_in_the_way(Path(str(path)))
    if blocker is not None:
        raise SettingsError(
            f"{key}={path} lies under {blocker}, which is a file, not a folder: choose another {key}."
        )
    read_only = unwritable_folder(Path(str(path)))
    if read_only is not None:
        raise SettingsError(
            f"{key}={path} cannot be written: {read_only} is read-only for this user. Choose a writable {key}, "
            f"or make {read_only} writable."
        )


def check_top_level(
    cfg: DictConfig, schema: Callable[..., Any], groups: set[str], what: str
) -> dict[str, Any]:
    """The config's own keys (seed, ckpt, ...) against schema; group nodes are left to their own checks.
    Returns the top-level values, resolved."""
    own = {}
    for key in cfg.keys():
        if key in groups or key == "hydra":
            continue
        own[key] = None if OmegaConf.is_missing(cfg, key) else value_of(cfg, key)
    check(schema, own, "", what)
    return own
