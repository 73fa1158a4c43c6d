"""Classes that test runs load by Hydra `_target_` (tests/ on sys.path or PYTHONPATH): training probes and a
tiny FID feature extractor, a sampler from outside the package. A module of its own, because every conftest.py is imported as `conftest`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, ClassVar

import pytorch_lightning as pl
import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from ddim.diffusion.schedule import Schedule
from ddim.samplers import Sampler, sample
from ddim.settings import Count, Range


class RecordNetInputs(pl.Callback):
    """Writes <dirpath>/rank<r>.pt: each training step's clean batch x0 and the (x_t, t) the network was fed."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)
        self.records: dict[str, list[torch.Tensor]] = {"x0": [], "x_t": [], "t": []}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        def record(module, args):
            if module.training:
                self.records["x_t"].append(args[0].detach().clone())
                self.records["t"].append(args[1].detach().clone())

        pl_module.net.register_forward_pre_hook(record)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.records["x0"].append(batch.detach().clone())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        records = {k: torch.stack(v) for k, v in self.records.items()}
        records["alphas_cumprod"] = pl_module.schedule.alphas_cumprod
        torch.save(records, self.dirpath / f"rank{trainer.global_rank}.pt")


class Killed(Exception):
    """Stands in for a kill: raised by KillAtStep, it ends the run without any further hook saving anything."""


class KillAtStep(pl.Callback):
    """Ends the run abruptly when the given optimizer step is about to start (after earlier checkpoints)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Killed(f"killed before step {self.step}")


class TinyExtractor(FeatureExtractorBase):
    """A fixed random projection of 4x4-pooled pixels: cheap, deterministic, uint8 in -> (N, dim) out."""

    def __init__(self, name: str = "tiny", features_list: tuple = ("feat",), dim: int = 6, **kwargs) -> None:
        super().__init__(name, list(features_list))
        gen = torch.Generator().manual_seed(1234)
        self.proj = torch.nn.Parameter(torch.randn(3 * 16, dim, generator=gen), requires_grad=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        pooled = torch.nn.functional.adaptive_avg_pool2d(x.float() / 255.0, 4).flatten(1)
        return (pooled @ self.proj,)

    @staticmethod
    def get_provided_features_list():
        return ("feat",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "feat"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 4, 4, dtype=torch.uint8)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Toy(Sampler):
    """A sampler defined outside the package (tests/evaluation/test_eval.py adds it with one yaml): DDIM's
    deterministic step on a scaled noise estimate."""

    name: ClassVar[str] = "toy"
    steps: Count = 4
    scale: Annotated[float, Range(gt=0)] = 1.0

    def nfe(self, schedule: Schedule) -> int:
        return len(self.sequence(schedule))

    def run(self, model, x_T, schedule, generator=None, callback=None) -> torch.Tensor:
        def scaled(x, t):
            return self.scale * model(x, t)

        return sample(scaled, x_T, self.sequence(schedule), schedule, callback=callback)


class EvalModeExtractor(TinyExtractor):
    """TinyExtractor that refuses to run in training mode (a fresh module is in training mode: only an
    explicit .eval() passes) and counts the images it is given."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen = 0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        if self.training:
            raise AssertionError("the FID feature extractor ran in training mode")
        self.seen += x.shape[0]
        return super().forward(x)
