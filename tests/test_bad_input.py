"""Bad input on the command line, class by class: every case ends in exactly one line on stderr, exit 2, the
full key path named, and nothing written (src/train.py and src/eval.py check every setting of every job
before Hydra creates a folder; ddim.hydra_utils.check_command_line, run here in-process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddim.evaluation.settings import check_before_run as check_eval
from ddim.hydra_utils import check_command_line
from ddim.training.checks import check_before_run as check_train

CONF = Path(__file__).resolve().parents[1] / "conf"
EVAL = ["ckpt=x", "data=digits"]
TRAIN = ["experiment=quickstart"]

# (entry, overrides, the message starts with). A list per class of the reliability review.
CASES = [
    # A non-integer for an integer option.
    ("eval", ["data.limit=abc"], "data.limit=abc is invalid: it must be an integer >= 1 or null"),
    ("eval", ["seed=abc"], "seed=abc is invalid: it must be an integer >= 0"),
    ("eval", ["task=nll", "nll.timesteps_per_image=abc"], "nll.timesteps_per_image=abc is invalid"),
    ("eval", ["task=nll", "nll.n_images=abc"], "nll.n_images=abc is invalid"),
    ("eval", ["task=nll", "nll.max_batch=abc"], "nll.max_batch=abc is invalid"),
    (
        "eval",
        ["task=rate_distortion", "rate_distortion.n_images=abc"],
        "rate_distortion.n_images=abc is invalid",
    ),
    ("eval", ["task=progressive", "progressive.n_samples=abc"], "progressive.n_samples=abc is invalid"),
    ("eval", ["task=reconstruction", "reconstruction.steps=[abc]"], "reconstruction.steps[0]=abc is invalid"),
    ("eval", ["task=interpolation", "interpolation.n_pairs=abc"], "interpolation.n_pairs=abc is invalid"),
    ("eval", ["task=consistency", "consistency.steps=[abc]"], "consistency.steps[0]=abc is invalid"),
    ("eval", ["fid.reference_limit=abc"], "fid.reference_limit=abc is invalid"),
    (
        "eval",
        ["sampler.timesteps=[a,b]"],
        "sampler.timesteps=[a,b] is invalid: it must be a list of integers",
    ),
    ("eval", ["batch_size=abc"], "batch_size=abc is invalid: it must be an integer >= 1"),
    ("train", ["data.batch_size=abc"], "data.batch_size=abc is invalid: it must be an integer >= 1"),
    ("train", ["seed=abc"], "seed=abc is invalid"),
    ("train", ["trainer.max_steps=abc"], "trainer.max_steps=abc is invalid"),
    # Counts of 0 or below.
    ("eval", ["task=progressive", "progressive.n_samples=0"], "progressive.n_samples=0 is invalid"),
    ("eval", ["task=interpolation", "interpolation.n_pairs=0"], "interpolation.n_pairs=0 is invalid"),
    ("eval", ["task=consistency", "consistency.n_samples=0"], "consistency.n_samples=0 is invalid"),
    ("eval", ["task=reconstruction", "reconstruction.n_images=0"], "reconstruction.n_images=0 is invalid"),
    ("eval", ["task=reconstruction", "reconstruction.n_images=-5"], "reconstruction.n_images=-5 is invalid"),
    (
        "eval",
        ["task=reconstruction", "reconstruction.batch_size=-1"],
        "reconstruction.batch_size=-1 is invalid",
    ),
    (
        "eval",
        ["task=reconstruction", "reconstruction.batch_size=0"],
        "reconstruction.batch_size=0 is invalid",
    ),
    ("eval", ["fid.batch_size=0"], "fid.batch_size=0 is invalid"),
    ("eval", ["task=progressive", "progressive.every=0"], "progressive.every=0 is invalid"),
    ("eval", ["n_samples=0"], "n_samples=0 is invalid"),
    ("eval", ["sampler.steps=0"], "sampler.steps=0 is invalid"),
    ("eval", ["seed=-1"], "seed=-1 is invalid: it must be an integer >= 0"),
    ("train", ["cpu_threads=0"], "cpu_threads=0 is invalid"),
    ("train", ["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0 is invalid"),
    ("train", ["data.val_size=-1"], "data.val_size=-1 is invalid: it must be an integer >= 0"),
    # Wrong types and ranges that were accepted in silence.
    ("eval", ["sampler.timesteps=[0.5,250.7,600.2]"], "sampler.timesteps=[0.5,250.7,600.2] is invalid"),
    ("eval", ["use_ema=maybe"], "use_ema=maybe is invalid: it must be true or false"),
    ("eval", ["seed=1.5"], "seed=1.5 is invalid"),
    ("eval", ["task=nll", "nll.clip_x0=maybe"], "nll.clip_x0=maybe is invalid: it must be true or false"),
    (
        "eval",
        ["task=rate_distortion", "rate_distortion.clip_x0=maybe"],
        "rate_distortion.clip_x0=maybe is invalid",
    ),
    ("eval", ["task=nll", "nll.n_images=1.5"], "nll.n_images=1.5 is invalid"),
    ("eval", ["task=nll", "nll.mode=both"], "nll.mode=both is invalid: it must be one of exact, mc"),
    ("eval", ["task=sweep", "sweep.etas=[0,-1]"], "sweep.etas[1]=-1 is invalid: it must be a number >= 0"),
    (
        "eval",
        ["sampler.timesteps=5"],
        "sampler.timesteps=5 is invalid: it must be a list of integers or null",
    ),
    (
        "train",
        ["model.net.attn_resolutions=[3]"],
        "model.net.attn_resolutions=[3] is invalid: [3] matches no level",
    ),
    (
        "train",
        ["model.optim.betas=[0.9]"],
        "model.optim.betas=[0.9] is invalid: it must be a list of 2 values",
    ),
    ("train", ["model.ema_decay=1.5"], "model.ema_decay=1.5 is invalid: it must be a number in [0, 1)"),
    ("train", ["model.net.dropout=1.5"], "model.net.dropout=1.5 is invalid: it must be a number in [0, 1)"),
    ("train", ["model.net.ch=48"], "model.net.ch=48 is invalid: it must be a multiple of 32"),
    ("train", ["model.net.ch_mult=[1,2,2,2,2]"], "model.net.resolution=8 is invalid: 5 levels (ch_mult)"),
    (
        "train",
        ["model.parameterization=score"],
        "model.parameterization=score is invalid: it must be one of eps",
    ),
    ("train", ["model.variance=learned"], "model.loss=simple gives no gradient to the learned variance"),
    ("train", ["model.optim.lr=-1"], "model.optim.lr=-1 is invalid: it must be a number > 0"),
    # The key named is the one typed, wherever the option lives.
    ("train", ["callbacks.sample_grid.sampler.steps=0"], "callbacks.sample_grid.sampler.steps=0 is invalid"),
    ("train", ["callbacks.sample_grid.sampler.eta=-1"], "callbacks.sample_grid.sampler.eta=-1 is invalid"),
    (
        "train",
        ["callbacks.model_checkpoint.every_n_train_steps=-1"],
        "callbacks.model_checkpoint.every_n_train_steps=-1 is invalid",
    ),  # fmt: skip
    ("eval", ["task=reconstruction", "reconstruction.steps=[0]"], "reconstruction.steps[0]=0 is invalid"),
    ("eval", ["task=consistency", "consistency.steps=[10,0]"], "consistency.steps[1]=0 is invalid"),
    ("eval", ["task=sweep", "sweep.steps=[abc]"], "sweep.steps[0]=abc is invalid"),
    ("eval", ["+data.foo=1"], "data.foo is not a setting of data=digits; its settings are: image_size"),
    ("train", ["+data.foo=1"], "data.foo is not a setting of data=digits"),
    ("train", ["+foo=1"], "foo is not a setting of conf/train.yaml; its settings are: task_name, seed"),
    ("eval", ["+foo=1"], "foo is not a setting of conf/eval.yaml"),
    (
        "eval",
        ["sampler=heun", "sampler.eta=0"],
        "sampler.eta is not a setting of sampler=heun; its settings are",
    ),
    ("eval", ["sampler=heun", "+sampler.eta=0"], "sampler.eta is not a setting of sampler=heun"),
    ("eval", ["sampler.name=unipc"], "sampler.name: a sampler is chosen by its config, e.g. sampler=unipc"),
    ("eval", ["sampler.variant=bh1"], "sampler.variant is not a setting of sampler=ddim"),
    ("train", ["trainer.max_stepz=3"], "trainer.max_stepz is not a setting of trainer=cpu; its settings are"),
    ("eval", ["fid.weights=mine"], "fid.weights=mine is invalid: it must be one of auto, torch_fidelity"),
    # Groups and options that do not exist: our line, not Hydra's list.
    ("eval", ["sampler=heunn"], "sampler=heunn is not an option of sampler: choose one of ddim, ddpm"),
    ("eval", ["task=bpd"], "task=bpd is not an option of task: choose one of consistency"),
    ("train", ["experiment=cifar100"], "experiment=cifar100 is not an option of experiment"),
    ("train", ["data=mnist"], "data=mnist is not an option of data"),
    # Lightning's settings: our line, before any Lightning wrapper.
    ("train", ["trainer.precision=77"], "trainer.precision=77 is invalid: it must be one of 64, 32, 16,"),
    ("train", ["trainer.accelerator=gpu"], "trainer.accelerator=gpu but this machine has no usable GPU"),
    ("eval", ["trainer.devices=0"], "trainer.devices=0 is invalid"),
    ("train", ["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0 is invalid"),
    ("train", ["trainer.val_check_interval=abc"], "trainer.val_check_interval=abc is invalid"),
    # Folders that cannot be created.
    ("eval", ["hydra.run.dir=FILE/run"], "hydra.run.dir=FILE/run lies under FILE, which is a file"),
    ("train", ["hydra.run.dir=FILE/run"], "hydra.run.dir=FILE/run lies under FILE, which is a file"),
    ("eval", ["samples_dir=FILE/samples"], "samples_dir=FILE/samples lies under FILE, which is a file"),
    ("eval", ["paths.cache_dir=FILE/cache"], "The FID cache paths.cache_dir=FILE/cache lies under FILE"),
    # A multirun: every job is checked before the first one runs.
    ("eval", ["-m", "sampler.steps=10,abc"], "sampler.steps=abc is invalid"),
    ("train", ["-m", "seed=1,-2"], "seed=-2 is invalid"),
    # Overrides Hydra cannot read.
    ("eval", ["sampler.steps=[1,"], "Cannot read the override"),
    ("eval", ["ckpt=???"], "No checkpoint given: pass ckpt=PATH"),
]


@pytest.mark.parametrize("entry, overrides, message", CASES, ids=[" ".join(o) for _, o, _ in CASES])
def test_a_bad_setting_is_one_line_and_exit_2_before_anything_is_written(
    tmp_path, capsys, entry, overrides, message
):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    base = EVAL if entry == "eval" else TRAIN
    args = [*base, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    args = [*args, *(o.replace("FILE", str(blocker)) for o in overrides)]
    with pytest.raises(SystemExit) as exit_info:
        check_command_line(CONF, entry, check_eval if entry == "eval" else check_train, args)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    assert lines[0].split(": ", 1)[1].startswith(message.replace("FILE", str(blocker))), lines[0]
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]  # nothing written


def test_good_command_lines_pass(capsys):
    check_command_line(CONF, "eval", check_eval, [*EVAL, "sampler=dpm_solver_pp", "sampler.steps=5"])
    check_command_line(CONF, "train", check_train, [*TRAIN, "model.net.ch=64", "trainer.max_steps=10"])
    assert capsys.readouterr().err == ""
