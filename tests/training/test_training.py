"""Training core end to end: real Hydra configs, fast_dev_run per experiment, DDP on CPU, resume, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddim.errors import user_error_in
from ddim.nets.unet import UNet
from ddim.training.module import DiffusionModule
from ddim.training.train import closing_line, data_choice, train

ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
# Keep every run tiny: two-step sampler, few samples.
TINY = [
    "callbacks.sample_grid.n_samples=2",
    "callbacks.sample_grid.sampler.steps=2",
    "data.batch_size=2",
    "data.num_workers=0",
]


def run_train(
    args: list[str], run_dir: Path, timeout: int = 300, pythonpath: list[Path] = ()
) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, str(ROOT / "src" / "train.py"), f"hydra.run.dir={run_dir}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=run_dir.parent,
    )


def test_experiments_are_discovered():
    assert {"cifar10", "celeba64", "quickstart"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_runs_fast_dev_run(
    experiment, tmp_path, fake_cifar10, train_cfg, write_fake_celeba
):
    data_overrides = {
        "cifar10": [f"data.root={fake_cifar10[0]}"],
        "celeba64": [f"data.root={tmp_path / 'celeba_root'}"],
    }.get(experiment, [])
    if experiment == "celeba64":
        write_fake_celeba(tmp_path / "celeba_root" / "celeba", [0, 0, 0, 2])
    overrides = [f"experiment={experiment}", *TINY, *data_overrides, "+trainer.fast_dev_run=1"]
    cfg = train_cfg(overrides, tmp_path)
    expected_params = {"cifar10": 35_746_307, "celeba64": 78_700_803}.get(experiment)
    if expected_params:
        # The paper's network and recipe, exactly as configured.
        assert sum(p.numel() for p in UNet(**cfg.model.net).parameters()) == expected_params
        assert cfg.model.optim.lr == 2e-4 and cfg.model.optim.warmup_steps == 5000
        assert cfg.model.ema_decay == 0.9999 and cfg.trainer.gradient_clip_val == 1.0
        assert cfg.trainer.max_steps == 800_000 and cfg.data.flip and cfg.model.net.dropout == 0.1
        # The full-width network costs minutes per step on 2 CPU cores; the run itself uses a narrow one.
        cfg = train_cfg([*overrides, "model.net.ch=32"], tmp_path)
    metrics = train(cfg)
    assert metrics["global_step"] == 1
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert json.loads((tmp_path / "metrics.json").read_text())["global_step"] == 1


QUICK = [
    "experiment=quickstart",
    *TINY,
    "data.limit=64",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "callbacks.model_checkpoint.save_top_k=-1",
    "callbacks.sample_grid.every_n_steps=100",
]


def test_resume_continues_step_optimizer_schedule_and_ema(tmp_path, train_cfg, caplog, recwarn):
    run_dir = tmp_path / "run"
    with caplog.at_level("INFO", logger="ddim.training.train"):
        train(train_cfg([*QUICK, "trainer.max_steps=4", "model.ema_decay=0.999"], run_dir))
    # The EMA copy is eval by design: Lightning's eval-mode warning about it is silenced.
    assert not [w for w in recwarn if "eval mode at the start of training" in str(w.message)]
    assert caplog.messages[-1] == closing_line(
        run_dir / "checkpoints" / "last.ckpt", run_dir / "samples", None
    )
    ckpt4 = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt4["global_step"] == 4

    train(train_cfg([*QUICK, "trainer.max_steps=8", "model.ema_decay=0.999", "ckpt_path=last"], run_dir))
    ckpt8 = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt8["global_step"] == 8
    assert json.loads((run_dir / "metrics.json").read_text())["resumed_from"].endswith("last.ckpt")
    # Adam's step counter and the warm-up schedule continued rather than restarting at 0.
    adam_steps = {int(s["step"]) for s in ckpt8["optimizer_states"][0]["state"].values()}
    assert adam_steps == {8}
    assert ckpt8["lr_schedulers"][0]["last_epoch"] == 8
    # The EMA was restored and kept averaging: with decay 0.999 four more steps move it only a little,
    # whereas a restarted EMA would sit at the (freshly initialised or current) network weights.
    name = "ema_net.conv_in.weight"
    ema4, ema8 = ckpt4["state_dict"][name], ckpt8["state_dict"][name]
    net8 = ckpt8["state_dict"]["net.conv_in.weight"]
    assert not torch.equal(ema4, ema8)
    assert (ema8 - ema4).norm() < 0.1 * (net8 - ema4).norm()
    # The step-2 checkpoint of the first part is still there, untouched.
    assert (run_dir / "checkpoints" / "step_0000002.ckpt").is_file()
    module = DiffusionModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", map_location="cpu")
    torch.testing.assert_close(module.ema_net.conv_in.weight, ema8)
    assert module.hparams["ema_decay"] == 0.999


def test_closing_line_names_the_data_config_the_run_was_composed_with(compose_config):
    from hydra.core.hydra_config import HydraConfig

    assert data_choice() is None  # composed in-process: no data= to suggest
    HydraConfig.instance().set_config(
        compose_config(["experiment=quickstart"], "train", return_hydra_config=True)
    )
    try:
        assert data_choice() == "digits"
    finally:
        HydraConfig.instance().cfg = None
    ckpt = Path("run/checkpoints/last.ckpt")
    line = closing_line(ckpt, Path("run/samples"), "digits")
    assert f"Checkpoint: {ckpt}; sample grids: {Path('run/samples')}" in line
    assert line.endswith(f"Next: python src/eval.py ckpt={ckpt} data=digits task=sample")


def _noise(records: dict) -> torch.Tensor:
    """The noise each step drew, recovered from x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps."""
    a = records["alphas_cumprod"][records["t"]].float().view(*records["t"].shape, 1, 1, 1)
    return (records["x_t"] - a.sqrt() * records["x0"]) / (1 - a).sqrt()


@pytest.mark.slow
def test_two_process_ddp_on_cpu_draws_distinct_noise_per_rank_and_reproduces(tmp_path):
    probes = {}
    for attempt in ("first", "again"):
        run_dir = tmp_path / attempt
        probe = [
            "+callbacks.probe._target_=probes.RecordNetInputs",
            f"+callbacks.probe.dirpath={run_dir / 'probe'}",
        ]
        args = [
            *QUICK,
            "trainer.max_steps=3",
            "trainer.devices=2",
            "trainer.strategy=ddp",
            "logger=none",
            *probe,
        ]
        result = run_train(args, run_dir, pythonpath=[ROOT / "tests"])
        assert result.returncode == 0, result.stderr[-3000:]
        probes[attempt] = [torch.load(run_dir / "probe" / f"rank{r}.pt") for r in (0, 1)]
    rank0, rank1 = probes["first"]
    assert rank0["t"].shape == (3, 2)
    # Each rank draws its own timesteps and noise (recovered from what the network was fed) ...
    assert not torch.equal(rank0["t"], rank1["t"])
    noise0, noise1 = _noise(rank0), _noise(rank1)
    assert (noise0 - noise1).abs().min() > 1e-4 and 0.5 < noise0.std() < 1.5
    # ... while the data order is one global shuffle split between the ranks: no image on both.
    images0, images1 = rank0["x0"].flatten(0, 1), rank1["x0"].flatten(0, 1)
    assert not any(torch.equal(a, b) for a in images0 for b in images1)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 3 and metrics["world_size"] == 2
    # The run ends with a resumable checkpoint of its last step, not only of the last interval.
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3
    assert any(k.startswith("ema_net.") for k in ckpt["state_dict"])
    # Each rank keeps its own random stream in the checkpoint.
    ranks = ckpt["callbacks"]["RandomStreams"]["ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["step"]["cpu"], ranks[1]["step"]["cpu"])

    # The same seed and world size give the same run.
    for first, again in zip(probes["first"], probes["again"], strict=True):
        for key in ("x0", "x_t", "t"):
            assert torch.equal(first[key], again[key])


def test_a_config_hydra_cannot_compose_gives_one_line_no_traceback(tmp_path, hydra_main):
    # Through src/train.py's @hydra.main in-process (the command-line path short of a new interpreter).
    code, output = hydra_main("train.py", [f"hydra.run.dir={tmp_path / 'run'}", "experiment=does_not_exist"])
    assert code != 0
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines == [
        "Error: experiment=does_not_exist is not an option of experiment: choose one of ablation, celeba64, "
        "cifar10, quickstart."
    ]
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_corrupt_checkpoint_gives_one_line_no_traceback(tmp_path, train_cfg, exits_with_one_line):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(os.urandom(4096))
    cfg = train_cfg(["experiment=quickstart", f"ckpt_path={corrupt}", *TINY[:2]], tmp_path / "run")
    assert "not a readable PyTorch checkpoint" in exits_with_one_line(train, cfg)
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["experiment=cifar10", "trainer=cpu", "data.root=/nonexistent/cifar10", "model.net.ch=32"],
            "cifar-10-batches-py",
        ),
        (["experiment=quickstart", "ckpt_path=/nonexistent/x.ckpt"], "Checkpoint not found"),
        (["experiment=quickstart", "ckpt_path=last"], "ckpt_path=last but"),
        (
            ["experiment=quickstart", "model.net.resolution=16", "model.net.attn_resolutions=[8]"],
            "model expects",
        ),
    ],
)
def test_bad_input_raises_one_user_error(tmp_path, overrides, message, train_cfg):
    with pytest.raises(Exception) as info:
        train(train_cfg([*overrides, *TINY], tmp_path / "run"))
    user_error = user_error_in(info.value)
    assert user_error is not None and message in str(user_error)
    assert not (tmp_path / "run" / "metrics.json").exists()
