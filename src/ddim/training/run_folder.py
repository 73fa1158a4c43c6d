"""Runs never overwrite runs: a new run may not start in a folder that holds another run's checkpoints, and a
resume must have steps left to train, training state to resume and the network its checkpoint was made with.

Checked before anything is written: `check_before_run` from the Hydra callback (before Hydra creates or
writes into the run folder), `check_run_folder` at the start of train(cfg) for in-process callers, and
`check_checkpoint_fits` once the model is built.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from ddim.checkpoints.files import CheckpointError
from ddim.checkpoints.lightning_io import read_training_checkpoint, resolve_resume_path
from ddim.errors import DDIMError
from ddim.io import unwritable_folder

# Settings of model.net that decide the network's tensors (dropout and the like may change on a resume).
SHAPE_KEYS = (
    "in_channels",
    "out_channels",
    "resolution",
    "ch",
    "ch_mult",
    "num_res_blocks",
    "attn_resolutions",
)


class RunFolderError(DDIMError):
    """A run would overwrite another run, or a resume cannot continue the checkpoint it names."""


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    return sorted((Path(run_dir) / "checkpoints").glob("*.ckpt"))


def resume_command(run_dir: str | Path) -> str:
    """The command that continues the run in run_dir: its own overrides (from Hydra's record of them) plus
    the folder and ckpt_path=last."""
    run_dir = Path(run_dir)
    overrides: list[str] = []
    try:
        recorded = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
        if isinstance(recorded, list):
            overrides = [str(o) for o in recorded if not str(o).startswith(("hydra.run.dir=", "ckpt_path="))]
    except (OSError, yaml.YAMLError):
        pass  # a run started from Python has no record; the folder and ckpt_path are what matters
    words = ["python", "src/train.py", *overrides, f"hydra.run.dir={run_dir}", "ckpt_path=last"]
    return " ".join(shlex.quote(w) for w in words)


def check_new_run(run_dir: str | Path, ckpt_path: str | None) -> None:
    """Refuse a new run (or a resume of another run's checkpoint) in a folder holding checkpoints."""
    found = run_checkpoints(run_dir)
    if not found or ckpt_path == "last":
        return
    own = Path(run_dir, "checkpoints").resolve()
    if ckpt_path is not None and Path(ckpt_path).resolve().parent == own:
        return  # going back to one of this run's own checkpoints
    what = "A new run" if ckpt_path is None else f"Resuming {ckpt_path} (another run's checkpoint)"
    raise RunFolderError(
        f"{run_dir} already holds a training run ({len(found)} checkpoint(s) in {own.name}/: "
        f"{', '.join(p.name for p in found[:3])}{', ...' if len(found) > 3 else ''}); {what.lower()} there "
        f"would overwrite them. To continue that run: {resume_command(run_dir)} ; to start a new one, choose "
        "another folder (hydra.run.dir=outputs/<new name>) or leave hydra.run.dir unset."
    )


def _net_differences(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    return [
        f"model.net.{key}={wanted[key]!r} here, {saved[key]!r} in the checkpoint"
        for key in SHAPE_KEYS
        if key in saved and key in wanted and _plain(saved[key]) != _plain(wanted[key])
    ]


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def check_resume(checkpoint: str, max_steps: Any, net: Mapping[str, Any] | None) -> dict[str, Any]:
    """The checkpoint to resume holds training state, was made by this network and has steps left before
    trainer.max_steps (-1: no limit). Returns the checkpoint (tensors memory-mapped)."""
    ckpt = read_training_checkpoint(checkpoint)
    saved_net = (ckpt.get("hyper_parameters") or {}).get("net")
    differences = _net_differences(saved_net, net) if isinstance(saved_net, Mapping) and net else []
    if differences:
        raise RunFolderError(
            f"{checkpoint} was trained with another network ({'; '.join(differences[:3])}): resume it with the "
            f"settings it was trained with (its run folder's .hydra/overrides.yaml lists them), or start a new "
            "run without ckpt_path."
        )
    step = int(ckpt["global_step"])
    if isinstance(max_steps, int) and 0 <= max_steps <= step:
        raise RunFolderError(
            f"{checkpoint} is at step {step} and trainer.max_steps={max_steps} is not above it: there is "
            f"nothing left to train. Raise trainer.max_steps (e.g. trainer.max_steps={2 * max(step, 1)}) to go "
            f"on, or evaluate it: python src/eval.py ckpt={shlex.quote(str(checkpoint))}"
        )
    return ckpt


def check_writable(run_dir: str | Path) -> None:
    """A read-only run folder (or parent) fails at Hydra's log file or the first checkpoint: say so first."""
    read_only = unwritable_folder(run_dir)
    if read_only is not None:
        raise RunFolderError(
            f"The run folder {run_dir} cannot be written: {read_only} is read-only for this user. Choose a "
            f"writable folder (hydra.run.dir=outputs/<name>, or paths.log_dir=...), or make {read_only} writable."
        )


def check_run_folder(cfg: DictConfig, run_dir: str | Path) -> str | None:
    """The run folder checks for a composed training config; returns the checkpoint file to resume from (or
    None)."""
    ckpt_path = cfg.get("ckpt_path")
    check_writable(run_dir)
    check_new_run(run_dir, ckpt_path)
    resume_from = resolve_resume_path(ckpt_path, Path(run_dir))
    if resume_from is not None:
        net = OmegaConf.select(cfg, "model.net", default=None)
        net = OmegaConf.to_container(net, resolve=True) if isinstance(net, DictConfig) else None
        check_resume(resume_from, OmegaConf.select(cfg, "trainer.max_steps", default=None), net)
    return resume_from


def check_checkpoint_fits(model: torch.nn.Module, checkpoint: str | None) -> None:
    """Every tensor of the built model has its counterpart, of the same shape, in the checkpoint to resume
    (the exact check, once the model exists; Lightning's own is a long size-mismatch traceback)."""
    if checkpoint is None:
        return
    saved = read_training_checkpoint(checkpoint)["state_dict"]
    for key, tensor in model.state_dict().items():
        theirs = saved.get(key)
        if theirs is None or tuple(theirs.shape) != tuple(tensor.shape):
            there = "missing" if theirs is None else f"of shape {tuple(theirs.shape)}"
            raise CheckpointError(
                f"{checkpoint} does not fit this model: its {key} is {there}, the model's is "
                f"{tuple(tensor.shape)}. Resume it with the model settings it was trained with (its run "
                "folder's .hydra/overrides.yaml lists them), or start a new run without ckpt_path."
            )


def check_before_run(config: DictConfig, folder_key: str) -> None:
    """The check to run before Hydra creates or writes into the run folder (folder_key "hydra.run.dir"). A
    multirun ("hydra.sweep.dir") is left to train(), which checks each job's own folder."""
    run_dir = OmegaConf.select(config, folder_key)
    if run_dir and folder_key == "hydra.run.dir":
        check_run_folder(config, run_dir)
