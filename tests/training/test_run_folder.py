"""Runs never overwrite runs: a new run into a folder holding checkpoints is refused with the command that
resumes it; a resume needs steps left, training state and the network it was trained with; a training multirun
with a failed job exits non-zero."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ddim.command_line import explain_override_error, quote_unicode_overrides
from ddim.training.module import DiffusionModule
from ddim.training.run_folder import check_before_run, check_checkpoint_fits, check_run_folder
from ddim.training.train import train

QUICK = [
    "experiment=quickstart",
    "data.limit=8",
    "data.batch_size=4",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "callbacks.sample_grid.every_n_steps=100",
    "callbacks.sample_grid.n_samples=1",
    "callbacks.sample_grid.sampler.steps=2",
]


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file below folder with a digest of its bytes: what 'nothing was written' compares."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A 2-step quickstart run made through src/train.py's own main (so Hydra recorded its overrides), with
    HOME unset and the CSV logger, which resolves every setting (paths.cache_dir used to need HOME)."""
    import logging
    import runpy
    import sys

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    argv, root, environ = sys.argv, logging.getLogger(), dict(os.environ)
    handlers, level = list(root.handlers), root.level
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for name in ("HOME", "DDIM_CACHE", "XDG_CACHE_HOME"):
        os.environ.pop(name, None)
    sys.argv = ["train.py", *QUICK, "logger=csv", "trainer.max_steps=2", f"hydra.run.dir={run_dir}"]
    try:
        runpy.run_path(str(Path(__file__).resolve().parents[2] / "src" / "train.py"), run_name="__main__")
    finally:
        sys.argv = argv
        os.environ.clear()
        os.environ.update(environ)
        torch.set_num_threads(threads)
        for handler in set(root.handlers) - set(handlers):
            handler.close()
        root.handlers[:], root.level = handlers, level
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    return run_dir


def test_a_new_run_into_a_run_folder_is_refused_with_the_resume_command(trained_run, hydra_main):
    before = _snapshot(trained_run)
    code, output = hydra_main("train.py", [*QUICK, "trainer.max_steps=4", f"hydra.run.dir={trained_run}"])
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, output
    assert f"{trained_run} already holds a training run" in lines[0]
    # The resume command repeats the run's own overrides (Hydra's record of them), then folder and last.
    assert "experiment=quickstart" in lines[0] and "data.limit=8" in lines[0]
    assert f"hydra.run.dir={trained_run} ckpt_path=last" in lines[0] and "choose another folder" in lines[0]
    assert _snapshot(trained_run) == before  # not even Hydra's .hydra/ or train.log


def test_a_new_run_in_process_is_refused_too(trained_run, train_cfg, exits_with_one_line):
    before = _snapshot(trained_run)
    line = exits_with_one_line(train, train_cfg([*QUICK, "trainer.max_steps=4"], trained_run))
    assert "already holds a training run" in line and "ckpt_path=last" in line
    # Another run's checkpoint resumed here would replace this run's files as well.
    other = trained_run.parent / "other.ckpt"
    other.write_bytes((trained_run / "checkpoints" / "last.ckpt").read_bytes())
    line = exits_with_one_line(
        train, train_cfg([*QUICK, "trainer.max_steps=4", f"ckpt_path={other}"], trained_run)
    )
    assert "another run's checkpoint" in line
    other.unlink()
    assert _snapshot(trained_run) == before


@pytest.mark.parametrize("max_steps", [1, 2])
def test_a_resume_without_steps_left_says_so_and_exits_2(max_steps, trained_run, hydra_main):
    before = _snapshot(trained_run)
    args = [*QUICK, f"trainer.max_steps={max_steps}", f"hydra.run.dir={trained_run}", "ckpt_path=last"]
    code, output = hydra_main("train.py", args)
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, output
    assert f"is at step 2 and trainer.max_steps={max_steps} is not above it" in lines[0]
    assert "trainer.max_steps=4" in lines[0] and "python src/eval.py ckpt=" in lines[0]
    assert _snapshot(trained_run) == before  # last.ckpt not rewritten


def test_a_weights_only_file_cannot_resume(trained_run, tmp_path, train_cfg, exits_with_one_line):
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    weights = tmp_path / "weights.ckpt"
    torch.save({"state_dict": ckpt["state_dict"], "hyper_parameters": ckpt["hyper_parameters"]}, weights)
    cfg = train_cfg([*QUICK, "trainer.max_steps=4", f"ckpt_path={weights}"], tmp_path / "run")
    line = exits_with_one_line(train, cfg)
    assert "holds weights but no training state" in line and f"python src/eval.py ckpt={weights}" in line
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_of_another_network_is_one_line(trained_run, tmp_path, train_cfg, exits_with_one_line):
    # The 8x8 checkpoint resumed into a 16x16 model: the settings that differ are named.
    last = trained_run / "checkpoints" / "last.ckpt"
    overrides = [*QUICK, "trainer.max_steps=4", f"ckpt_path={last}", "data.image_size=16"]
    net = ["model.net.resolution=16", "model.net.ch=64", "model.net.attn_resolutions=[8]"]
    cfg = train_cfg([*overrides, *net], tmp_path / "run")
    line = exits_with_one_line(train, cfg)
    assert "was trained with another network" in line
    assert "model.net.resolution=16 here, 8 in the checkpoint" in line and "model.net.ch=64 here, 32" in line
    assert not (tmp_path / "run").exists()

    # Settings that agree while the tensors do not (a hand-edited file): the exact check names the tensor.
    ckpt = torch.load(last, weights_only=True)
    model = DiffusionModule(net={**ckpt["hyper_parameters"]["net"], "ch": 64})
    with pytest.raises(
        Exception,
        match=r"does not fit this model: its net\.\S+ is of shape \(128, 32\), the model.s is \(256, 64\)",
    ):
        check_checkpoint_fits(model, str(last))


@pytest.mark.slow
def test_a_training_multirun_with_a_failed_job_exits_non_zero(tmp_path, hydra_main):
    # Job 1's data file holds no images: found when the job reads its data, after the command line was accepted.
    for name, n in (("good", 8), ("empty", 0)):
        for split in ("train", "t10k"):
            path = tmp_path / name / f"{split}-images-idx3-ubyte"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(np.array([2051, n, 28, 28], dtype=">u4").tobytes() + bytes(n * 28 * 28))
    sweep = tmp_path / "sweep"
    data = ["data=fashion_mnist", "data.image_size=8", f"data.root={tmp_path / 'good'},{tmp_path / 'empty'}"]
    args = ["-m", *QUICK, "logger=none", "trainer.max_steps=1", *data, f"hydra.sweep.dir={sweep}"]
    code, output = hydra_main("train.py", args)
    assert code == 1, output[-2000:]
    assert "holds no images" in output and "1 job(s) of the multirun failed" in output
    assert "Traceback" not in output
    assert (sweep / "0" / "checkpoints" / "last.ckpt").is_file()  # the other job ran to the end


def test_the_trained_run_logged_its_settings_with_home_unset(trained_run):
    assert list(trained_run.rglob("hparams.yaml")) and (trained_run / "metrics.json").is_file()


def test_a_read_only_run_folder_is_one_line_before_hydra_writes(tmp_path, monkeypatch, hydra_main):
    # Tests run as root, for whom os.access grants everything: the read-only folder is simulated.
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: False if Path(p) == read_only else real(p, mode, **kw)
    )
    code, output = hydra_main("train.py", [*QUICK, f"hydra.run.dir={read_only / 'run'}"])
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, output
    assert f"{read_only} is read-only for this user" in lines[0] and "hydra.run.dir=" in lines[0]
    assert list(read_only.iterdir()) == []


def test_a_unicode_run_folder_typed_unquoted(tmp_path, hydra_main):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    # A folder holding another run, so the command stops at the run-folder check once Hydra has read it.
    folder = tmp_path / "ñandú"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_bytes(b"")
    typed = f"hydra.run.dir={folder}"
    with pytest.raises(OverrideParseException) as err:  # Hydra's grammar: unquoted values are ASCII
        OverridesParser.create().parse_overrides([typed])
    line = explain_override_error(str(err.value))
    assert line is not None and f"'hydra.run.dir=\"{folder}\"'" in line and "ASCII" in line
    # Quoted for the user, the same command line reaches the run-folder check, which names the folder.
    code, output = hydra_main("train.py", quote_unicode_overrides([*QUICK, typed]))
    assert code == 2 and f"{folder} already holds a training run" in output


def test_a_multirun_resume_is_checked_per_job_not_at_the_sweep_folder(tmp_path, compose_config):
    # ckpt_path=last names each job's own last.ckpt; the sweep folder itself holds none.
    overrides = [*QUICK, "ckpt_path=last", f"hydra.sweep.dir={tmp_path}"]
    cfg = compose_config(overrides, config_name="train", return_hydra_config=True)
    check_before_run(cfg, "hydra.sweep.dir")
    with pytest.raises(Exception, match="ckpt_path=last but"):
        check_run_folder(cfg, tmp_path / "0")
