"""The FID monitor in tiny training runs (the real configs, a tiny feature extractor): it scores every sample
in eval mode, logs a metric named by its sample count and sampler, keeps best_fid.ckpt through the atomic
checkpoint writer, resumes its history with the run, and draws the samples evaluation would draw."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from ddim.checkpoints import safe_load
from ddim.checkpoints.lightning_io import AtomicCheckpointIO, is_intact
from ddim.errors import DDIMError
from ddim.evaluation.generation import SampleWriter
from ddim.metrics.shards import ShardPlan
from ddim.samplers import DPMSolverPP
from ddim.training.fid_monitor import FIDMonitor, count_label, interleave
from ddim.training.module import DiffusionModule
from ddim.training.train import train

METRIC = "val/fid_10_dpm_solver_pp2_S3_quadratic"


@pytest.fixture
def monitored(tiny_extractor_override, tmp_path) -> list[str]:
    """A quickstart run of a few steps with the monitor every 2 steps: 10 samples in batches of 4."""
    return [
        "experiment=quickstart",
        "callbacks=with_fid",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.limit=64",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "callbacks.sample_grid.every_n_steps=100",
        "callbacks.sample_grid.n_samples=2",
        "callbacks.sample_grid.sampler.steps=2",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "callbacks.fid_monitor.every_n_steps=2",
        "callbacks.fid_monitor.n_samples=10",
        "callbacks.fid_monitor.batch_size=4",
        "callbacks.fid_monitor.sampler.steps=3",
        "callbacks.fid_monitor.fid.feature_extractor={_target_:probes.EvalModeExtractor}",
        f"callbacks.fid_monitor.fid.cache_dir={tmp_path / 'cache'}",
        "callbacks.fid_monitor.fid.num_workers=0",
        "callbacks.fid_monitor.fid.kid_subsets=10",
        "logger=csv",
    ]


def history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "fid_monitor.json").read_text())["history"]


@pytest.mark.slow
def test_monitor_logs_keeps_the_best_atomically_and_resumes_its_history(
    tmp_path, train_cfg, monitored, monkeypatch
):
    saved = []
    original = AtomicCheckpointIO.save_checkpoint

    def spy(self, checkpoint, path, storage_options=None):
        saved.append(Path(path).name)
        return original(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", spy)
    run = tmp_path / "run"
    metrics = train(train_cfg([*monitored, "trainer.max_steps=4"], run))
    first = history(run)
    assert [h["step"] for h in first] == [2, 4]
    # Every sample is scored (10, in batches of 4), in eval mode (EvalModeExtractor refuses training mode).
    assert all(h["n"] == 10 and h["fid"] >= 0 and "kid" in h for h in first)
    assert metrics[METRIC] == first[-1]["fid"]
    rows = list(csv.DictReader(open(next(run.rglob("metrics.csv")))))
    logged = [(int(r["step"]), float(r[METRIC])) for r in rows if r.get(METRIC)]
    assert logged == [(h["step"], h["fid"]) for h in first]
    assert any(r.get(METRIC.replace("fid", "kid", 1)) for r in rows)

    best = run / "checkpoints" / "best_fid.ckpt"
    assert "best_fid.ckpt" in saved and is_intact(best)  # through the atomic writer, and whole
    best_step = min(first, key=lambda h: h["fid"])["step"]
    state = safe_load(best)
    assert state["global_step"] == best_step
    (monitor_state,) = [v for k, v in state["callbacks"].items() if k.startswith("FIDMonitor")]
    assert monitor_state["best"]["step"] == best_step and monitor_state["history"][-1]["step"] == best_step

    train(train_cfg([*monitored, "trainer.max_steps=6", "ckpt_path=last"], run))
    resumed = history(run)
    assert resumed[:2] == first  # restored from last.ckpt, not measured again
    assert [h["step"] for h in resumed] == [2, 4, 6]
    last = safe_load(run / "checkpoints" / "last.ckpt")
    (monitor_state,) = [v for k, v in last["callbacks"].items() if k.startswith("FIDMonitor")]
    assert monitor_state["history"] == resumed
    assert monitor_state["best"] == min(resumed, key=lambda h: h["fid"])


def test_the_monitor_draws_the_samples_evaluation_draws(tmp_path, tiny_net, compose_config):
    cfg = compose_config(["experiment=quickstart", "callbacks=with_fid", "paths.output_dir=x"], "train")
    node = {k: v for k, v in dict(cfg.callbacks.fid_monitor).items() if not k.startswith("_")}
    monitor = FIDMonitor(
        **{**node, "n_samples": 7, "batch_size": 3, "seed": 5, "sampler": None, "data": None}
    )
    module = DiffusionModule(net=dict(tiny_net), schedule={"num_timesteps": 100})
    with torch.no_grad():
        for p in module.ema_net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    images = monitor.generate(module, range(7))
    assert images.dtype == torch.uint8 and images.shape == (7, 1, 8, 8)
    # Evaluation's generator: the same network, sampler and seed give the same bytes, whatever the batches.
    writer = SampleWriter(module.eps_fn(), module.schedule, DPMSolverPP(steps=10), (1, 8, 8), tmp_path,
                          ShardPlan(7, 7), seed=5, batch_size=7)  # fmt: skip
    assert torch.equal(images, writer.generate(0, 7))
    assert torch.equal(images[4:], monitor.generate(module, range(4, 7)))
    assert monitor.metric == "val/fid_7_dpm_solver_pp2_S10_quadratic"


def test_the_composed_node_is_checked_and_the_names_carry_the_sample_count(compose_config):
    from ddim.training.checks import check_train_config

    cfg = compose_config(["experiment=cifar10", "paths.output_dir=x"], "train")
    check_train_config(cfg)
    monitor = cfg.callbacks.fid_monitor  # on in the CIFAR10 recipe
    assert (monitor.n_samples, monitor.every_n_steps, monitor.sampler.steps) == (2000, 25000, 10)
    assert "fid_monitor" not in compose_config(["experiment=quickstart"], "train").callbacks
    assert [count_label(n) for n in (2000, 50000, 500, 1500)] == ["2k", "50k", "500", "1500"]


def test_gathered_ranks_interleave_back_into_index_order():
    n, world = 7, 3  # rank r made samples r, r + 3, ...: 3, 2 and 2 samples, padded to 3
    per_rank = [list(range(r, n, world)) + [-1] * (3 - len(range(r, n, world))) for r in range(world)]
    assert interleave(torch.tensor(per_rank), n).tolist() == list(range(n))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("callbacks.fid_monitor.sampler.steps=5000", "steps must be an integer in"),
        ("callbacks.fid_monitor.fid.feature_extractor=null", "fid.weights_path=.*does not exist"),
    ],
)
def test_what_would_fail_at_the_first_measurement_fails_before_training(
    tmp_path, train_cfg, monitored, override, message
):
    missing = f"callbacks.fid_monitor.fid.weights_path={tmp_path / 'missing.pth'}"
    cfg = train_cfg([*monitored, override, missing], tmp_path / "run")
    with pytest.raises(DDIMError, match=message):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()
