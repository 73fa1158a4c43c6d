"""The training loader's order, flips and place in the epoch, all from (seed, epoch): the same on every DDP
rank and after a resume, so a run killed mid-epoch continues with the very next batch.

`ResumableLoader` takes its order as DistributedSampler does (one permutation from seed + epoch, each rank
reading every world_size-th index) and keeps how many batches of the epoch it has handed out; Lightning saves
that with each checkpoint (`state_dict`) and restores it before iterating again (`load_state_dict`). Flips
are chosen per (seed, epoch, index) too, so worker processes hold no random state that a resume would lose.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def derive_seed(*keys: int) -> int:
    """A 32-bit seed from integer keys, e.g. (seed, rank): distinct tuples give unrelated streams
    (seed + rank would make seed 1 on rank 0 repeat seed 0 on rank 1)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def shared_seed() -> int:
    """The run's seed, the same on every rank: set by seed_everything (as Lightning's own samplers read it)."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class ResumableSampler(DistributedSampler):
    """DistributedSampler's order (a permutation from seed + epoch, every rank taking each world_size-th
    index) with flip choices drawn from (seed, epoch) per dataset index, starting `start` items in.

    Items are (index, flip) pairs when flip_p > 0 (for `Flipped`), plain indices otherwise.
    """

    def __init__(self, dataset: Dataset, seed: int, shuffle: bool = True, flip_p: float = 0.0) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        super().__init__(
            dataset,
            num_replicas=dist.get_world_size() if distributed else 1,
            rank=dist.get_rank() if distributed else 0,
            shuffle=shuffle,
            seed=seed,
        )
        self.flip_p = float(flip_p)
        self.start = 0

    def __iter__(self) -> Iterator[Any]:
        indices = list(super().__iter__())[self.start :]
        if self.flip_p <= 0:
            return iter(indices)
        gen = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 2))
        flips = (torch.rand(len(self.dataset), generator=gen) < self.flip_p).tolist()
        return iter([(i, flips[i]) for i in indices])


class Flipped(Dataset):
    """Mirrors items the sampler marks: keys are (index, flip) pairs; a plain index reads the item unflipped."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, bool]) -> torch.Tensor:
        index, flip = key if isinstance(key, tuple) else (key, False)
        x = self.dataset[index]
        return x.flip(-1) if flip else x


class ResumableLoader(DataLoader):
    """A shuffling training loader whose place in the epoch is part of the checkpoint (Lightning calls
    state_dict when saving and load_state_dict before it iterates on resume).

    seed: None takes the run's seed (`shared_seed`), so every rank sees one global order.
    flip: mirror each item with probability 0.5, the choice fixed by (seed, epoch, index).
    Other keywords go to DataLoader.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int | None = None,
        shuffle: bool = True,
        flip: bool = False,
        **kwargs: Any,
    ) -> None:
        sampler = ResumableSampler(
            dataset,
            seed=shared_seed() if seed is None else seed,
            shuffle=shuffle,
            flip_p=0.5 if flip else 0.0,
        )
        super().__init__(
            Flipped(dataset) if flip else dataset, batch_size=batch_size, sampler=sampler, **kwargs
        )
        self._handed_out = 0
        self._resume_at: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        # A generator: nothing runs until the first batch is asked for, after the trainer set the epoch.
        resume, self._resume_at = self._resume_at, None
        skip = resume["batches"] if resume and resume["epoch"] == self.sampler.epoch else 0
        self.sampler.start = skip * self.batch_size
        self._handed_out = skip
        for batch in super().__iter__():
            self._handed_out += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": self._handed_out}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume_at = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])}
