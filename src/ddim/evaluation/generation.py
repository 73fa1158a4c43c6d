"""Seeded, sharded, resumable sample generation through Lightning's `trainer.predict` (1 or N processes).

Reproducibility contract: sample i is drawn from one torch.Generator seeded from (seed, i) only (its x_T
first, then every noise draw of the sampler), and every shard is generated in the same batches whatever the
number of processes. So 1 and N processes write byte-identical files, and a resumed run equals an
uninterrupted one. Each shard belongs to exactly one rank (round-robin, no DistributedSampler padding).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ddim.diffusion.parameterization import ModelFn
from ddim.diffusion.schedule import Schedule
from ddim.images import to_uint8
from ddim.metrics.shards import (
    ShardPlan,
    check_manifest,
    remove_stale_temporaries,
    shard_complete,
    shard_dir,
    shard_problems,
    write_shard,
)
from ddim.samplers import Sampler, initial_noise, per_sample_generators

log = logging.getLogger(__name__)


class Chunks(Dataset):
    """Predict items: (shard, first index, last index + 1) for the batches one rank still has to make."""

    def __init__(self, chunks: list[tuple[int, int, int]]) -> None:
        self.chunks = chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> tuple[int, int, int]:
        return self.chunks[i]


def pending_chunks(root: Path, plan: ShardPlan, batch_size: int, rank: int, world_size: int) -> list:
    """This rank's batches of the shards that are not complete yet, in index order."""
    out = []
    for shard in plan.shards_for_rank(rank, world_size):
        if not shard_complete(root, shard, plan):
            out += [(shard, r.start, r.stop) for r in plan.chunks(shard, batch_size)]
    return out


class SampleWriter(pl.LightningModule):
    """Wraps any eps-network, a schedule and a Sampler; predict_step makes one batch, and a shard is
    written (atomically) as soon as its last batch is done."""

    def __init__(
        self,
        net: torch.nn.Module,
        schedule: Schedule,
        sampler: Sampler,
        image_shape: tuple[int, int, int],
        out_dir: str | Path,
        plan: ShardPlan,
        seed: int = 0,
        batch_size: int = 256,
    ) -> None:
        super().__init__()
        self.net = net
        self.schedule = schedule
        self.sampler = sampler
        self.image_shape = tuple(image_shape)
        self.out_dir = Path(out_dir)
        self.plan = plan
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self._pending: dict[int, list[tuple[int, torch.Tensor]]] = {}
        self._net_dtype = torch.float32
        self.loop_started: float | None = None

    def eps_fn(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # The sampler keeps x in float32; a half-precision network ("bf16-true") sees its own dtype.
        return self.net(x.to(self._net_dtype), t).to(x.dtype)

    def predict_dataloader(self) -> DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        chunks = pending_chunks(self.out_dir, self.plan, self.batch_size, rank, world)
        # batch_size=None: each item already is one batch description; no collation.
        return DataLoader(Chunks(chunks), batch_size=None, shuffle=False, num_workers=0)

    def on_predict_start(self) -> None:
        self.loop_started = time.perf_counter()
        rank, world = self.trainer.global_rank, self.trainer.world_size
        remove_stale_temporaries(self.out_dir, self.plan.shards_for_rank(rank, world))
        self.net.eval()
        self._net_dtype = next(self.net.parameters()).dtype

    def generate(self, start: int, stop: int) -> torch.Tensor:
        """uint8 images for sample indices start..stop-1 (deterministic in (seed, index))."""
        generators = per_sample_generators(self.seed, range(start, stop))
        x_T = initial_noise((stop - start, *self.image_shape), generators, device=self.device)
        # A ModelFn casts for the network itself and carries a learned variance to the ancestral sampler.
        eps_fn = self.net if isinstance(self.net, ModelFn) else self.eps_fn
        x0 = self.sampler.run(eps_fn, x_T, self.schedule, generator=generators)
        return to_uint8(x0).cpu()

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        shard, start, stop = (int(v) for v in batch)
        parts = self._pending.setdefault(shard, [])
        parts.append((start, self.generate(start, stop)))
        indices = self.plan.indices(shard)
        if sum(p.shape[0] for _, p in parts) == len(indices):
            images = torch.cat([p for _, p in sorted(parts, key=lambda item: item[0])])
            write_shard(self.out_dir, shard, images, indices, self.plan.name_width)
            del self._pending[shard]
        return None


@dataclass
class GenerationResult:
    n_samples: int
    generated: int  # images this call made, all ranks together (0 when everything was already on disk)
    seconds: float  # wall time of the call, including process start-up
    loop_seconds: float  # time inside the sampling loop (rank 0, until every rank finished)

    @property
    def images_per_second(self) -> float | None:
        return self.generated / self.loop_seconds if self.generated and self.loop_seconds > 0 else None


def generate_samples(
    trainer: pl.Trainer,
    net: torch.nn.Module,
    schedule: Schedule,
    sampler: Sampler,
    image_shape: tuple[int, int, int],
    out_dir: str | Path,
    n_samples: int,
    seed: int = 0,
    batch_size: int = 256,
    shard_size: int = 1000,
    identity: dict[str, Any] | None = None,
) -> GenerationResult:
    """Generate the missing shards of `out_dir` on all ranks of `trainer`, then wait for every rank.

    The trainer must be built with use_distributed_sampler=False (see `build_trainer`). `identity` goes to
    the folder's manifest.json, which guards against resuming with different settings.
    """
    out_dir = Path(out_dir)
    plan = ShardPlan(int(n_samples), int(shard_size))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    check_manifest(out_dir, {**(identity or {}), "seed": int(seed), "shard_size": int(shard_size)})
    module = SampleWriter(net, schedule, sampler, image_shape, out_dir, plan, seed, batch_size)
    start = time.perf_counter()
    problems = {s: shard_problems(out_dir, s, plan) for s in range(plan.num_shards)}
    missing = [s for s, p in problems.items() if p]
    damaged = {s: p for s, p in problems.items() if p and p != ["not written"]}
    if damaged and trainer.is_global_zero:
        details = "; ".join(f"{shard_dir(out_dir, s).name}: {', '.join(p[:3])}" for s, p in damaged.items())
        log.warning(
            f"Regenerating {len(damaged)} shard(s) of {out_dir} that failed verification ({details})."
        )
    if not missing:
        # Every rank sees the same finished folder, so all of them skip and nobody waits in a collective.
        log.info(f"All {plan.num_shards} shards of {out_dir} exist; nothing to generate.")
    else:
        if len(missing) < plan.num_shards:
            log.info(
                f"Resuming {out_dir}: {plan.num_shards - len(missing)} of {plan.num_shards} shards exist."
            )
        trainer.predict(module, return_predictions=False)
        trainer.strategy.barrier("ddim-generation-done")
    end = time.perf_counter()
    seconds = end - start
    # Throughput from the sampling loop itself (process start-up and model transfer excluded).
    loop_seconds = end - module.loop_started if module.loop_started is not None else seconds
    generated = sum(len(plan.indices(s)) for s in missing)
    return GenerationResult(plan.n_samples, generated, seconds, loop_seconds)
