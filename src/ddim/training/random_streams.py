"""Each DDP rank's training steps draw from their own random stream, seeded from (seed, rank) and saved in
every checkpoint, so ranks draw distinct t, noise and dropout and a resumed run draws exactly what the
uninterrupted run would have.

The global torch generators (CPU and CUDA), from which t, noise and dropout come, are swapped to the step's
stream at the start of each training step and back at its end: validation, sample grids or a loader's start
between steps draw nothing from it. Every rank's stream and its numpy/python/torch process state go into the
checkpoint (only rank 0 writes it, so they are gathered first).
"""

from __future__ import annotations

import logging
import random
import secrets
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist

from ddim.data.resumable import derive_seed

log = logging.getLogger(__name__)


def _generator_states(device: torch.device) -> dict[str, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def _set_generator_states(states: dict[str, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(states["cpu"])
    if device.type == "cuda" and states["cuda"] is not None:
        torch.cuda.set_rng_state(states["cuda"], device)


def _seeded_generator_states(seed: int, device: torch.device) -> dict[str, torch.Tensor | None]:
    """Generator states as after manual_seed(seed), made without touching the global generators."""
    cuda = torch.Generator(device).manual_seed(seed).get_state() if device.type == "cuda" else None
    return {"cpu": torch.Generator().manual_seed(seed).get_state(), "cuda": cuda}


def _process_states(device: torch.device) -> dict[str, Any]:
    """torch, numpy and python random state of this process, as plain values (loadable with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": _generator_states(device),
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def _set_process_states(states: dict[str, Any], device: torch.device) -> None:
    _set_generator_states(states["torch"], device)
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(_as_tuples(states["python"]))


def _as_tuples(value: Any) -> Any:
    """random.setstate wants tuples; a checkpoint round trip may hand back lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


class RandomStreams(pl.Callback):
    """Each rank's training steps draw from their own stream, seeded from (seed, rank) and checkpointed.

    seed: the run's seed; None draws a fresh one per rank (distinct, but not reproducible).
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._rank = 0
        self._world_size = 1
        self._device = torch.device("cpu")
        self._step_streams: dict[str, torch.Tensor | None] | None = None
        self._outside: dict[str, torch.Tensor | None] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._rank, self._world_size = trainer.global_rank, trainer.world_size
        self._device = trainer.strategy.root_device
        self._reseed()

    def _reseed(self, *extra: int) -> None:
        """Seed every stream of this rank from (seed, rank, *extra); other extra keys give unrelated streams."""
        base = secrets.randbits(31) if self.seed is None else self.seed
        keys = (base, self._rank, *extra)
        # Process streams (numpy, python, torch outside the step) and the step's stream differ too.
        process_seed, step_seed = derive_seed(*keys, 0), derive_seed(*keys, 1)
        random.seed(process_seed)
        np.random.seed(process_seed)
        torch.manual_seed(process_seed)
        self._step_streams = _seeded_generator_states(step_seed, self._device)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._outside = _generator_states(self._device)
        _set_generator_states(self._step_streams, self._device)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._step_streams = _generator_states(self._device)
        _set_generator_states(self._outside, self._device)

    def state_dict(self) -> dict[str, Any]:
        # Only rank 0 writes the checkpoint, but every rank's streams must be in it.
        mine = {"step": self._step_streams, "process": _process_states(self._device)}
        ranks = [mine]
        if self._world_size > 1 and dist.is_available() and dist.is_initialized():
            ranks = [None] * self._world_size
            dist.all_gather_object(ranks, mine)
        return {"seed": self.seed, "ranks": ranks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ranks = state_dict["ranks"]
        if len(ranks) != self._world_size:
            # Streams cannot be split or merged; fresh ones, unrelated to those already used, keep noise new.
            log.warning(
                "The checkpoint was written by %d processes and this run has %d: the random streams are "
                "reseeded, so the run continues correctly but not bitwise as the original would have.",
                len(ranks),
                self._world_size,
            )
            self._reseed(len(ranks), self._world_size)
            return
        mine = ranks[self._rank]
        self._step_streams = {k: v for k, v in mine["step"].items()}
        _set_process_states(mine["process"], self._device)
