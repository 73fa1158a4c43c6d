"""timesteps.json: a timestep sequence searched for one sampler, NFE, noise schedule and checkpoint
(task=optimize_timesteps writes it; `sampler.timesteps_file=PATH` samples with it).

What a file is bound to, and how a run treats a difference:
- the sampler (its name and every setting that changes its updates: order, final_step, eta, ...): refused,
  the sequence was chosen for that update rule;
- the noise schedule (sha256 of its float64 betas): refused, the timesteps index another table;
- the NFE (what the sampler makes on the sequence): refused, a hand-edited or mismatched file;
- the checkpoint (sha256 of its file): a warning only, since a sequence searched on one model is a fair
  start for a fine-tuned or retrained one (the schedule, solver and NFE still hold); rerun the search to
  get the best for a new model.
The sequence replaces sampler.steps and sampler.skip_type, as sampler.timesteps does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ddim.diffusion.schedule import Schedule
from ddim.errors import DDIMError
from ddim.io import write_json

FORMAT = "ddim-timesteps/1"
# Settings that pick the sequence (the file replaces them) rather than the sampler's update rule.
SEQUENCE_KEYS = ("steps", "skip_type", "timesteps", "timesteps_file")


class TimestepsFileError(DDIMError, ValueError):
    """A timesteps file is missing, damaged, or made for another sampler, schedule or NFE."""


@dataclass(frozen=True)
class TimestepsFile:
    path: str
    sampler: str
    settings: dict[str, Any]  # the update settings the sequence was searched for (no SEQUENCE_KEYS)
    nfe: int
    timesteps: tuple[int, ...]  # increasing; the top where the search let the chain start
    num_timesteps: int
    betas_sha256: str
    checkpoint_sha256: str | None


def update_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A sampler's settings without the ones that choose its timesteps."""
    return {k: v for k, v in settings.items() if k not in SEQUENCE_KEYS}


def schedule_sha256(schedule: Schedule) -> str:
    return hashlib.sha256(schedule.betas.to(torch.float64).contiguous().numpy().tobytes()).hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, sorted) for diffusers folders."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            h.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def read_timesteps_file(path: str) -> TimestepsFile:
    """The file's binding and sequence; one TimestepsFileError line when it cannot be used at all."""
    where = f"sampler.timesteps_file={path}"
    try:
        data = json.loads(Path(path).expanduser().read_text())
    except FileNotFoundError:
        raise TimestepsFileError(
            f"{where} does not exist; make one with python src/eval.py ckpt=... task=optimize_timesteps."
        ) from None
    except (OSError, ValueError) as err:
        raise TimestepsFileError(f"{where} is not a readable JSON file ({err}).") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise TimestepsFileError(
            f"{where} is not a timesteps file of task=optimize_timesteps (format {FORMAT!r})."
        )
    try:
        seq = tuple(int(t) for t in data["timesteps"])
        record = TimestepsFile(
            path=str(path),
            sampler=str(data["sampler"]["name"]),
            settings=update_settings(dict(data["sampler"]["settings"])),
            nfe=int(data["nfe"]),
            timesteps=seq,
            num_timesteps=int(data["schedule"]["num_timesteps"]),
            betas_sha256=str(data["schedule"]["betas_sha256"]),
            checkpoint_sha256=(data.get("checkpoint") or {}).get("sha256"),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise TimestepsFileError(
            f"{where} lacks or garbles the field {err}; rerun task=optimize_timesteps."
        ) from None
    if not seq or list(seq) != sorted(set(seq)) or seq[0] < 0 or seq[-1] >= record.num_timesteps:
        raise TimestepsFileError(
            f"{where}: its timesteps must be distinct, increasing and inside [0, T - 1]; got {list(seq)}."
        )
    return record


def check_sampler(record: TimestepsFile, name: str, settings: dict[str, Any]) -> None:
    """Refuse a file searched for another sampler or other update settings."""
    mine = update_settings(settings)
    if name != record.sampler or mine != record.settings:
        differ = sorted(k for k in set(mine) | set(record.settings) if mine.get(k) != record.settings.get(k))
        detail = ", ".join(f"{k}={record.settings.get(k)!r} there, {mine.get(k)!r} here" for k in differ)
        raise TimestepsFileError(
            f"sampler.timesteps_file={record.path} was searched for sampler={record.sampler}"
            + (f" ({detail})" if name == record.sampler else f", not sampler={name}")
            + "; use the sampler settings it was made for, or search again with these."
        )


def check_schedule(record: TimestepsFile, schedule: Schedule) -> None:
    if schedule.num_timesteps != record.num_timesteps or schedule_sha256(schedule) != record.betas_sha256:
        raise TimestepsFileError(
            f"sampler.timesteps_file={record.path} was searched for another noise schedule (T="
            f"{record.num_timesteps}, betas sha256 {record.betas_sha256[:12]}) than this model's (T="
            f"{schedule.num_timesteps}, {schedule_sha256(schedule)[:12]}); search again for this checkpoint."
        )


def check_nfe(record: TimestepsFile, nfe: int) -> None:
    if nfe != record.nfe:
        raise TimestepsFileError(
            f"sampler.timesteps_file={record.path} records NFE {record.nfe}, but its {len(record.timesteps)} "
            f"timesteps make {nfe} network calls with this sampler; the file was edited or made for another NFE."
        )


def write_timesteps_file(path: str | Path, fields: dict[str, Any]) -> Path:
    """fields: sampler {name, settings}, nfe, timesteps, schedule {num_timesteps, betas_sha256, ...},
    checkpoint {path, sha256}, search {...}."""
    return write_json(path, {"format": FORMAT, **fields})
