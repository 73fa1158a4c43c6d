"""Generated samples on disk: uint8 PNG files in shard folders, each folder written atomically.

Layout of a samples directory:

    manifest.json                 what produced the samples (checkpoint, sampler, seed, shard size, image shape)
    shard_00000/000000.png        sample index 0 ... shard_size - 1
    shard_00000/checksums.json    sha256 of every image of the shard, written with it
    shard_00001/001000.png        ...

A shard is written into a hidden temporary folder and renamed into place, so a folder named shard_NNNNN is
always complete; an interrupted run leaves at most a temporary folder, which the next run removes. A shard
counts as done only when every file matches its recorded checksum (a file damaged or replaced later fails),
so resuming regenerates it, to the same bytes (seeds are per sample), and metrics never read it. Metrics
read exactly these files, the same ones a person can open.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ddim.errors import DDIMError
from ddim.images import read_image, to_pil
from ddim.io import atomic_directory, write_json
from ddim.io import remove_stale_temporaries as remove_temporaries

SHARD_PREFIX = "shard_"
MANIFEST = "manifest.json"
CHECKSUMS = "checksums.json"
# The fields that decide every pixel; n_samples is not one of them (more samples extend the same set).
IDENTITY_KEYS = ("checkpoint", "sampler", "seed", "shard_size", "image_shape", "schedule")


@dataclass(frozen=True)
class ShardPlan:
    """Sample indices 0..n_samples-1 cut into shards of `shard_size` consecutive indices."""

    n_samples: int
    shard_size: int

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise DDIMError(f"n_samples must be >= 1, got {self.n_samples}.")
        if self.shard_size < 1:
            raise DDIMError(f"shard_size must be >= 1, got {self.shard_size}.")

    @property
    def num_shards(self) -> int:
        return -(-self.n_samples // self.shard_size)

    def indices(self, shard: int) -> range:
        start = shard * self.shard_size
        return range(start, min(start + self.shard_size, self.n_samples))

    def chunks(self, shard: int, batch_size: int) -> list[range]:
        """The batches a shard is generated in: fixed by shard and batch size, never by the process count."""
        idx = self.indices(shard)
        return [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]

    def shards_for_rank(self, rank: int, world_size: int) -> list[int]:
        """Round-robin split: every shard belongs to exactly one rank (no padding, no duplicates)."""
        return list(range(rank, self.num_shards, world_size))

    @property
    def name_width(self) -> int:
        return max(6, len(str(self.n_samples - 1)))


def shard_dir(root: str | Path, shard: int) -> Path:
    return Path(root) / f"{SHARD_PREFIX}{shard:05d}"


def image_name(index: int, width: int = 6) -> str:
    return f"{index:0{width}d}.png"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shard_problems(root: str | Path, shard: int, plan: ShardPlan) -> list[str]:
    """Why this shard cannot be used as it is ([] when every expected file matches its checksum)."""
    folder = shard_dir(root, shard)
    if not folder.is_dir():
        return ["not written"]
    try:
        sums = json.loads((folder / CHECKSUMS).read_text())
    except (OSError, ValueError):
        return [f"no readable {CHECKSUMS}"]
    problems = []
    for index in plan.indices(shard):
        name = image_name(index, plan.name_width)
        if not (folder / name).is_file():
            problems.append(f"{name} missing")
        elif sums.get(name) != sha256(folder / name):
            problems.append(f"{name} differs from its checksum")
    return problems


def shard_complete(root: str | Path, shard: int, plan: ShardPlan) -> bool:
    """The shard folder holds every file this plan expects, each matching the checksum written with it."""
    return not shard_problems(root, shard, plan)


def write_shard(
    root: str | Path, shard: int, images: torch.Tensor, indices: Sequence[int], width: int = 6
) -> Path:
    """Write uint8 images (N, C, H, W) for `indices` as one shard folder, atomically (temp folder + rename)."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(
            f"write_shard expects uint8 (N, 1|3, H, W), got {images.dtype} {tuple(images.shape)}."
        )
    if images.shape[0] != len(indices):
        raise ValueError(f"{images.shape[0]} images for {len(indices)} indices.")
    final = shard_dir(Path(root), shard)
    with atomic_directory(final) as tmp:
        sums = {}
        for image, index in zip(images.cpu(), indices, strict=True):
            name = image_name(int(index), width)
            # compress_level 1: PNG stays lossless; higher levels only cost time for tiny images.
            to_pil(image).save(tmp / name, compress_level=1)
            sums[name] = sha256(tmp / name)
        write_json(tmp / CHECKSUMS, sums)  # inside the folder, so it appears (atomically) with the images
    return final


def remove_stale_temporaries(root: str | Path, shards: Sequence[int]) -> None:
    """Remove temporary folders an interrupted run left for these shards (only the caller's own shards, so
    processes never delete each other's work in progress)."""
    remove_temporaries(root, targets={shard_dir(Path(root), s).name for s in shards})


def check_manifest(root: str | Path, identity: dict[str, Any]) -> None:
    """Refuse to mix samples from different checkpoints/samplers/seeds in one folder; create the manifest."""
    root = Path(root)
    path = root / MANIFEST
    identity = json.loads(json.dumps(identity))  # normalise tuples/ints exactly as stored
    if path.is_file():
        stored = json.loads(path.read_text())
        diff = [k for k in IDENTITY_KEYS if stored.get(k) != identity.get(k)]
        if diff:
            details = "; ".join(
                f"{k}: folder has {stored.get(k)!r}, this run {identity.get(k)!r}" for k in diff
            )
            raise DDIMError(
                f"{root} holds samples made with other settings ({details}). Use another samples_dir (the default "
                "is inside each new run directory) or delete that folder."
            )
        return
    write_json(path, identity)


class ShardImages(Dataset):
    """The first n_samples images of a samples directory as uint8 tensors (C, H, W), in index order."""

    def __init__(self, root: str | Path, plan: ShardPlan) -> None:
        self.files: list[Path] = []
        for shard in range(plan.num_shards):
            problems = shard_problems(root, shard, plan)
            if problems:
                raise DDIMError(
                    f"Shard {shard_dir(root, shard)} failed verification ({'; '.join(problems[:3])}): rerun the same "
                    "command to regenerate it (the same seeds give the same images)."
                )
            folder = shard_dir(root, shard)
            self.files += [folder / image_name(i, plan.name_width) for i in plan.indices(shard)]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return read_image(self.files[i])


def read_images(root: str | Path, plan: ShardPlan, limit: int | None = None) -> torch.Tensor:
    """Stack (some of) the written images: (N, C, H, W) uint8; for grids and tests."""
    ds = ShardImages(root, plan)
    n = len(ds) if limit is None else min(limit, len(ds))
    return torch.stack([ds[i] for i in range(n)])
