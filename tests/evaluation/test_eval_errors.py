"""Mistakes a user can make end with one clear message, before any sample is generated and without a
metrics.json: missing/unreadable/wrong-shape checkpoint, steps > T, eta < 0, missing Inception weights."""

from __future__ import annotations

import pytest
import torch

from ddim.errors import DDIMError
from ddim.evaluation import evaluate


def _assert_nothing_written(out):
    assert not (out / "metrics.json").exists() and not list(out.rglob("manifest.json"))
    assert not list(out.glob("samples/shard_*")) and not list(out.glob("*.png"))


@pytest.fixture
def fails(eval_cfg):
    """fails(overrides, match): evaluate() raises one DDIMError line matching `match`; returns it."""

    def check(overrides, match):
        with pytest.raises(DDIMError, match=match) as err:
            evaluate(eval_cfg(overrides))
        assert "\n" not in str(err.value).strip()
        return err.value

    return check


@pytest.mark.slow
def test_missing_checkpoint_argument_exits_with_one_line(tmp_path, run_eval_cli):
    proc = run_eval_cli(["logger=none", f"hydra.run.dir={tmp_path / 'run'}"])
    assert proc.returncode == 2
    assert "No checkpoint given: pass ckpt=PATH" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    _assert_nothing_written(tmp_path / "run")


def test_checkpoint_file_not_found(tmp_path, fails, eval_overrides):
    out = tmp_path / "run"
    fails(eval_overrides(tmp_path / "nope.ckpt", out), "checkpoint not found")
    _assert_nothing_written(out)


def test_checkpoint_of_the_wrong_shape(tmp_path, fails, eval_overrides, make_checkpoint, tiny_net):
    # The hyper-parameters say ch=32 but the tensors come from ch=64.
    path = make_checkpoint(tmp_path / "big.ckpt", net_kwargs={**tiny_net, "ch": 64})
    ckpt = torch.load(path, weights_only=True)
    ckpt["hyper_parameters"]["net"]["ch"] = 32
    torch.save(ckpt, path)
    out = tmp_path / "run"
    fails(eval_overrides(path, out), "shape mismatch|do not match")
    _assert_nothing_written(out)


def test_model_and_data_shapes_must_agree(tiny_ckpt, tmp_path, fails, eval_overrides):
    out = tmp_path / "run"
    overrides = [
        o if o != "data.image_size=8" else "data.image_size=16" for o in eval_overrides(tiny_ckpt, out)
    ]
    fails(overrides, r"shape \(1, 16, 16\).*\(1, 8, 8\)")
    _assert_nothing_written(out)


def test_steps_larger_than_T(tiny_ckpt, tmp_path, fails, eval_overrides):
    out = tmp_path / "run"
    fails(
        [*eval_overrides(tiny_ckpt, out), "sampler.steps=101"],
        r"sampler.steps must be an integer in \[1, 100\]",
    )
    _assert_nothing_written(out)


def test_negative_eta(tiny_ckpt, tmp_path, fails, eval_overrides):
    out = tmp_path / "run"
    fails(
        [*eval_overrides(tiny_ckpt, out), "sampler.eta=-0.5"],
        "sampler.eta=-0.5 is invalid: it must be a number >= 0",
    )
    _assert_nothing_written(out)
    # The grid is validated point by point before the first image, too.
    fails([*eval_overrides(tiny_ckpt, out), "task=sweep", "sweep.steps=[2,500]"], "sampler.steps")
    _assert_nothing_written(out)


def test_missing_inception_weights_offline_stop_before_generating(
    tiny_ckpt, tmp_path, monkeypatch, fails, eval_overrides
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    out = tmp_path / "run"
    err = fails(
        [*eval_overrides(tiny_ckpt, out), "fid=torch_fidelity", "fid.download=false"],
        "weights-inception-2015-12-05-6726825d.pth",
    )
    assert str(tmp_path / "torch-home") in str(err) and "Nothing was generated" in str(err)
    _assert_nothing_written(out)
    fails([*eval_overrides(tiny_ckpt, out), f"fid.detector_path={tmp_path / 'x.pt'}"], "does not exist")
    _assert_nothing_written(out)


def test_inception_score_with_the_detector_is_refused_before_generating(
    tiny_ckpt, tmp_path, detector_weights, fails, eval_overrides
):
    out = tmp_path / "run"
    cache = detector_weights.path.parents[1]  # reuse the conversion made once per session
    fails([*eval_overrides(tiny_ckpt, out, cache=cache), "fid=detector", "fid.isc=true"], "IS needs")
    _assert_nothing_written(out)


# ----------------------------------------------------------------------------------------------------------
# Bad values of the evaluation's own keys: in-process through evaluate() (src/eval.py prints the same
# DDIMError as one line and exits 2; the CLI cases below check that path for two of them).

BLOCKER = "a-file"  # a regular file made in tmp_path; folders "under" it cannot exist


@pytest.mark.parametrize(
    "override, match",
    [
        ("n_samples=abc", r"^n_samples=abc is invalid: it must be an integer >= 1\.$"),
        ("n_samples=1.5", r"^n_samples=1.5 is invalid: it must be an integer >= 1\.$"),
        ("batch_size=0", r"^batch_size=0 is invalid: it must be an integer >= 1\.$"),
        ("resolution=abc", r"^resolution=abc is invalid: it must be an integer >= 1 or null\.$"),
        ("resolution=0", r"^resolution=0 is invalid: it must be an integer >= 1 or null\.$"),
        (
            "resolution=32",
            r"resolution=32 but the checkpoint's network was trained on 8x8 .* drop resolution=",
        ),
        (
            f"samples_dir=TMP/{BLOCKER}/samples",
            rf"samples_dir=.*/{BLOCKER}/samples lies under .*{BLOCKER}, which is a file",
        ),
        (
            f"paths.output_dir=TMP/{BLOCKER}/run",
            rf"hydra.run.dir \(paths.output_dir\)=.* lies under .*{BLOCKER}",
        ),
        (
            "sampler.eta=2",
            r"^sampler.eta=2.0 is too large for the step .* of this schedule .*; use eta <= 1\.$",
        ),
        (
            "sampler.steps=ten",
            r"^sampler.steps=ten is invalid: it must be an integer >= 1, e.g. sampler.steps=100\.$",
        ),
        (
            "+sampler.variant=bh1",
            r"^sampler.variant is not a setting of sampler=ddim; its settings are: steps, ",
        ),
        ("sweep.etas=[0,2]", r"sampler.eta=2.0 is too large"),  # every sweep point, before the first image
    ],
)
def test_bad_evaluation_values_give_one_line_and_write_nothing(
    tiny_ckpt, tmp_path, fails, eval_overrides, override, match
):
    (tmp_path / BLOCKER).write_text("not a folder")
    out = tmp_path / "run"
    extra = ["task=sweep", "sweep.steps=[3]", "sweep.metrics=false"] if override.startswith("sweep.") else []
    fails([*eval_overrides(tiny_ckpt, out), *extra, override.replace("TMP", str(tmp_path))], match)
    _assert_nothing_written(out)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [BLOCKER]  # no file written anywhere


def test_bad_values_on_the_command_line_exit_2_with_one_line(
    tiny_ckpt, tmp_path, eval_cfg, exits_with_one_line, hydra_main
):
    # Through the wrapper src/eval.py calls evaluate() with (the real CLI run is the missing-checkpoint test).
    (tmp_path / BLOCKER).write_text("not a folder")
    common = [f"ckpt={tiny_ckpt}", "data=digits", "logger=none"]
    message = exits_with_one_line(
        evaluate, eval_cfg([*common, f"paths.output_dir={tmp_path / 'run'}", "n_samples=abc"])
    )
    assert message == "n_samples=abc is invalid: it must be an integer >= 1."
    # A run folder below a file: refused by the entry point's Hydra callback, before Hydra creates it.
    code, output = hydra_main("eval.py", [*common, f"hydra.run.dir={tmp_path / BLOCKER / 'run'}"])
    message = f"{BLOCKER}, which is a file, not a folder: choose another hydra.run.dir"
    errors = [line for line in output.splitlines() if message in line]
    assert code == 2 and len(errors) == 1 and "Traceback" not in output, output
    assert not list(tmp_path.rglob("manifest.json")) and not list(tmp_path.rglob("metrics.json"))


def test_a_sweep_folder_below_a_file_is_refused_before_the_multirun_starts(tiny_ckpt, tmp_path, hydra_main):
    (tmp_path / BLOCKER).write_text("not a folder")
    args = ["-m", f"ckpt={tiny_ckpt}", "data=digits", "logger=none", "sampler.steps=2,3"]
    code, output = hydra_main("eval.py", [*args, f"hydra.sweep.dir={tmp_path / BLOCKER / 'sweep'}"])
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, output
    assert f"{BLOCKER}, which is a file, not a folder: choose another hydra.sweep.dir" in lines[0]


def test_reference_statistics_of_another_dimension_are_refused_before_generating(
    tiny_ckpt, tmp_path, fails, eval_overrides, tiny_extractor_override
):
    import numpy as np

    stats = tmp_path / "stats.npz"
    np.savez(stats, mu=np.zeros(7), sigma=np.eye(7))  # the tiny extractor gives 6 features
    out = tmp_path / "run"
    overrides = [*eval_overrides(tiny_ckpt, out), tiny_extractor_override, f"fid.reference={stats}"]
    fails(overrides, r"^fid.reference=.*stats.npz holds statistics of 7-dimensional features, but the feature "
          r"extractor gives 6 .* Nothing was generated\.$")  # fmt: skip
    _assert_nothing_written(out)
