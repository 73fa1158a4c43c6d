"""FID (and KID) during training: every N optimizer steps, n samples with the EMA weights and a fast sampler,
scored against the cached training-set statistics with the evaluation's own FID code.

Honest by construction:
- the metric's name carries the sample count and the sampler (`val/fid_2k_dpm_solver_pp2_S10_quadratic`): FID
  is biased upwards at small n, so 2k-sample numbers read several points above a 50k FID of the same model
  and are comparable only with each other;
- sample i is drawn from the generator seeded by (seed, i), as evaluation draws it, so the same weights give
  the same images (and numbers) for any batch size, GPU count or resume point;
- images go through uint8 (`ddim.images.to_uint8`) exactly as evaluation's sample files do, and the feature
  extractor runs in eval mode (`ddim.metrics.fid.extract_features`);
- all n samples are made, in batches of `batch_size` (split over the ranks, gathered on rank 0).

The best value keeps `best_fid.ckpt` (written through the trainer, so atomically, beside the other
checkpoints), and the history is part of the callback's state: a resumed run keeps its curve and its best.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import hydra
import pytorch_lightning as pl
import torch

from ddim.images import to_uint8
from ddim.io import write_json
from ddim.metrics.scoring import FIDSettings, Scorer, prepare_scorer
from ddim.samplers import DPMSolverPP, Sampler, initial_noise, per_sample_generators
from ddim.samplers.base import sampler_from_settings
from ddim.settings import Checked, Count, Nested, Range, Seed

log = logging.getLogger(__name__)

BEST_NAME = "best_fid.ckpt"
HISTORY_NAME = "fid_monitor.json"


def monitor_sampler(settings: Mapping[str, Any] | None, key: str) -> Sampler:
    """The monitor's sampler: a conf/sampler node (its _target_ names the class); none means DPM-Solver++(2M)
    at 10 steps, a fast sampler whose 10-step samples are close to its converged ones."""
    return sampler_from_settings(settings, key) if settings else DPMSolverPP(steps=10)


def count_label(n: int) -> str:
    """2000 -> '2k', 500 -> '500': the sample count as the metric's name carries it."""
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def interleave(gathered: torch.Tensor, n: int) -> torch.Tensor:
    """Rank r made samples r, r + W, r + 2W, ... (padded to the same count); gathered (W, m, ...) -> the n
    samples in index order."""
    world, per_rank = gathered.shape[:2]
    return gathered.transpose(0, 1).reshape(world * per_rank, *gathered.shape[2:])[:n]


class FIDMonitor(pl.Callback):
    """every_n_steps: optimizer steps between measurements; n_samples: samples per FID (all made, in batches
    of batch_size); seed: sample i uses per_sample_generators(seed, [i]); sampler: a conf/sampler node; fid: the
    fid config group (weights, reference, kid, cache_dir, feature_extractor, ...); data: the training data
    config (the reference statistics' cache key, shared with evaluation); data_dir: paths.data_dir;
    dirpath: where best_fid.ckpt goes (default: the checkpoint callback's folder); save_best: keep it."""

    def __init__(
        self,
        *,
        fid: Annotated[Mapping[str, Any], Nested(FIDSettings)],
        every_n_steps: Count = 25000,
        n_samples: Annotated[int, Range(ge=2)] = 2000,
        batch_size: Count = 500,
        seed: Seed = 0,
        sampler: Annotated[Mapping[str, Any] | None, Checked(monitor_sampler)] = None,
        data: Mapping[str, Any] | None = None,
        data_dir: str = "data",
        dirpath: str | None = None,
        save_best: bool = True,
    ) -> None:
        self.settings = FIDSettings(**dict(fid))
        self.every_n_steps, self.n_samples = int(every_n_steps), int(n_samples)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.sampler = monitor_sampler(sampler, "callbacks.fid_monitor.sampler")
        self.data, self.data_dir = (dict(data) if data else None), str(data_dir)
        self.dirpath, self.save_best = dirpath, bool(save_best)
        label = f"{count_label(self.n_samples)}_{self.sampler.tag()}"
        self.metric, self.kid_metric = f"val/fid_{label}", f"val/kid_{label}"
        self.history: list[dict[str, float]] = []
        self.best: dict[str, float] | None = None
        self.scorer: Scorer | None = None
        self.enabled = True
        self._last_step = -1

    @property
    def state_key(self) -> str:
        return self._generate_state_key(metric=self.metric)

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history], "best": dict(self.best) if self.best else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state_dict.get("history", [])]
        self.best = dict(state_dict["best"]) if state_dict.get("best") else None
        if self.history:
            self._last_step = int(self.history[-1]["step"])

    # -- hooks ---------------------------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Fail before training, not after the first N steps: the sampler against the schedule, the weights.
        self.sampler.check_schedule(pl_module.schedule)
        self.enabled = stage == "fit" and not trainer.fast_dev_run
        if not self.enabled:
            log.info("FID monitor off (fast_dev_run or not fitting).")
            return
        # As evaluation's other ranks do: the weights resolved (and the IS layer checked), nothing built.
        prepare_scorer(
            self.settings, is_zero=False, datamodule=lambda: None, data_cfg=None, data_dir=self.data_dir
        )
        log.info(
            "FID monitor: %s every %d steps (%d samples, %s; a small-n FID, compare it only with itself).",
            self.metric,
            self.every_n_steps,
            self.n_samples,
            self.sampler.tag(),
        )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.enabled and step > 0 and step % self.every_n_steps == 0 and step != self._last_step:
            self.measure(trainer, pl_module)

    # -- the measurement -----------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, pl_module: pl.LightningModule, indices: range) -> torch.Tensor:
        """uint8 samples (CPU) for the given sample indices, made with the EMA weights in batches."""
        was_training = pl_module.training
        pl_module.eval()
        parts = []
        try:
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                gens = per_sample_generators(self.seed, chunk)
                x_T = initial_noise((len(chunk), *pl_module.image_shape), gens, device=pl_module.device)
                x0 = self.sampler.run(pl_module.eps_fn(ema=True), x_T, pl_module.schedule, generator=gens)
                parts.append(to_uint8(x0).cpu())
        finally:
            pl_module.train(was_training)
        return torch.cat(parts) if parts else torch.zeros(0, *pl_module.image_shape, dtype=torch.uint8)

    def gather(self, trainer: pl.Trainer, pl_module: pl.LightningModule, local: torch.Tensor) -> torch.Tensor:
        """All ranks' samples on every rank, in index order (one process: its own)."""
        world = trainer.world_size
        if world == 1:
            return local
        per_rank = math.ceil(self.n_samples / world)
        padded = torch.zeros(per_rank, *local.shape[1:], dtype=local.dtype)
        padded[: local.shape[0]] = local
        gathered = trainer.strategy.all_gather(padded.to(pl_module.device))
        return interleave(gathered.cpu(), self.n_samples)

    def prepare(self, device: torch.device) -> Scorer:
        """The extractor and reference statistics (computed once per data set and cached, as evaluation's)."""
        if self.scorer is None:
            start, f, data = time.perf_counter(), self.settings, self.data
            scorer = prepare_scorer(
                f,
                is_zero=True,
                datamodule=lambda: hydra.utils.instantiate(data, _convert_="all"),
                data_cfg=data,
                data_dir=self.data_dir,
            )
            assert scorer is not None  # rank 0's
            # "auto": beside the network being trained.
            self.scorer = dataclasses.replace(scorer, device=device) if f.device == "auto" else scorer
            log.info(
                "FID monitor: reference %s ready in %.1f s.",
                scorer.reference_desc,
                time.perf_counter() - start,
            )
        return self.scorer

    def score(self, images: torch.Tensor, device: torch.device) -> dict[str, float]:
        """FID (and KID) of uint8 images against the reference statistics."""
        return self.prepare(device).score(list(images.split(self.settings.batch_size)))

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        step = trainer.global_step
        self._last_step = step
        if trainer.is_global_zero:
            self.prepare(pl_module.device)  # once; not part of a measurement's time
        start = time.perf_counter()
        rank, world = trainer.global_rank, trainer.world_size
        images = self.gather(trainer, pl_module, self.generate(pl_module, range(rank, self.n_samples, world)))
        entry = None
        if trainer.is_global_zero:
            scores = self.score(images, pl_module.device)
            seconds = round(time.perf_counter() - start, 3)
            entry = {"step": step, "n": int(images.shape[0]), **scores, "seconds": seconds}
        entry = trainer.strategy.broadcast(entry, src=0)
        self.history.append(entry)
        improved = self.best is None or entry["fid"] < self.best["fid"]
        if improved:
            self.best = entry
        self.report(trainer, entry)
        if improved and self.save_best:
            trainer.save_checkpoint(self.best_path(trainer))
        return entry

    def best_path(self, trainer: pl.Trainer) -> Path:
        if self.dirpath:
            return Path(self.dirpath) / BEST_NAME
        checkpointing = trainer.checkpoint_callback
        folder = getattr(checkpointing, "dirpath", None) or Path(trainer.default_root_dir) / "checkpoints"
        return Path(folder) / BEST_NAME

    def report(self, trainer: pl.Trainer, entry: dict[str, float]) -> None:
        """Loggers (csv, wandb), the trainer's metrics, a log line and <run dir>/fid_monitor.json."""
        values = {self.metric: entry["fid"]}
        if "kid" in entry:
            values[self.kid_metric] = entry["kid"]
        for name, value in values.items():
            trainer.callback_metrics[name] = torch.tensor(value, dtype=torch.float64)
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.log_metrics(values, step=int(entry["step"]))
        kid = f", KID {entry['kid']:.4g}" if "kid" in entry else ""
        log.info(
            "Step %d: %s = %.3f%s from %d samples (not a 50k FID), %.1f s; best %.3f at step %d.",
            entry["step"],
            self.metric,
            entry["fid"],
            kid,
            self.n_samples,
            entry["seconds"],
            self.best["fid"],
            self.best["step"],
        )
        record = {"metric": self.metric, "n_samples": self.n_samples, "sampler": self.sampler.settings()}
        write_json(
            Path(trainer.default_root_dir) / HISTORY_NAME,
            {**record, "sampler_name": self.sampler.name, "best": self.best, "history": self.history},
        )
