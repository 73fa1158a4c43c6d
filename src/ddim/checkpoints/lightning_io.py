"""Training checkpoints through Lightning: written atomically beside their target, read without running pickle code,
and the resume file chosen among those that are intact.

Lightning's own writer stages the file through fsspec, which puts the temporary in TMPDIR and copies it
over the target when TMPDIR is another file system: a kill during that copy leaves a truncated last.ckpt.
"""

from __future__ import annotations

import logging
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from ddim.checkpoints.files import CheckpointError, safe_load
from ddim.io import remove_stale_temporaries, save_tensors

log = logging.getLogger(__name__)


def _is_local(path: Any) -> bool:
    return "://" not in str(path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's CheckpointIO with the project's atomic writer and the weights-only reader."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)  # remote storage: fsspec's way
            return
        save_tensors(checkpoint, path)

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if not _is_local(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        return safe_load(path)  # tensors and plain containers only: never pickled code


# What a Lightning checkpoint holds besides the weights, and a resume needs.
TRAINING_STATE_KEYS = ("pytorch-lightning_version", "global_step", "optimizer_states", "state_dict")


def read_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint to resume training from, its tensors memory-mapped (read only when used), with one clear
    CheckpointError for an unreadable file or one that holds weights without training state."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - let the plain reader name what is wrong with the file
        ckpt = safe_load(path)
    if not isinstance(ckpt, dict) or not all(key in ckpt for key in TRAINING_STATE_KEYS):
        raise CheckpointError(
            f"{path} holds weights but no training state (step, optimizer, loops), so training cannot resume "
            f"from it. Evaluate it with python src/eval.py ckpt={path}, or start a new run without ckpt_path."
        )
    return ckpt


def remove_interrupted_saves(checkpoint_dir: str | Path) -> None:
    """Delete the temporaries that saves killed mid-write left beside the checkpoints (each as big as one)."""
    for temp in remove_stale_temporaries(checkpoint_dir):
        log.info("Removed %s, left by a checkpoint save that was interrupted.", temp.name)


def is_intact(path: Path) -> bool:
    """A complete zip archive (torch.save's format) whose every member matches its CRC: a cut-off or damaged
    file fails here in well under a second, before Lightning builds anything."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def _step_of(path: Path) -> int:
    found = re.search(r"step_(\d+)", path.name)
    return int(found.group(1)) if found else -1


def intact_checkpoints(folder: Path) -> list[Path]:
    """The intact step_*.ckpt files in folder, newest step first."""
    candidates = sorted(
        folder.glob("step_*.ckpt"), key=lambda p: (_step_of(p), p.stat().st_mtime), reverse=True
    )
    return [p for p in candidates if is_intact(p)]


def resolve_resume_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """None, an explicit checkpoint file, or "last": <output_dir>/checkpoints/last.ckpt, or the newest intact
    step_*.ckpt (with a warning) when last.ckpt is damaged."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        folder = output_dir / "checkpoints"
        last = folder / "last.ckpt"
        if not last.is_file():
            raise CheckpointError(
                f"ckpt_path=last but {last} does not exist. To resume a run, point Hydra at its directory: "
                "hydra.run.dir=<that run's directory> ckpt_path=last, or pass ckpt_path=/path/to/file.ckpt."
            )
        if is_intact(last):
            return str(last)
        fallback = intact_checkpoints(folder)
        if not fallback:
            raise CheckpointError(
                f"{last} is damaged (truncated or corrupt) and {folder} holds no intact step_*.ckpt to resume "
                "from: start the run again without ckpt_path, or pass ckpt_path=<an intact checkpoint>."
            )
        log.warning(
            "%s is damaged (truncated or corrupt): resuming from %s, the newest intact checkpoint.",
            last,
            fallback[0].name,
        )
        return str(fallback[0])
    path = Path(ckpt_path)
    if not path.is_file():
        raise CheckpointError(
            f"Checkpoint not found: {path}. Pass ckpt_path=/path/to/file.ckpt (or ckpt_path=last)."
        )
    if not is_intact(path):
        intact = intact_checkpoints(path.parent)
        hint = (
            f"intact checkpoints beside it: {', '.join(p.name for p in intact[:5])}"
            if intact
            else "no intact step_*.ckpt is beside it"
        )
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated, corrupt, or another format); {hint}. "
            "Pass ckpt_path=<an intact checkpoint>."
        )
    return str(path)
