"""Mistakes a user can make end with one clear message, before any sample is generated and without a
metrics.json: missing/unreadable/wrong-shape checkpoint, steps > T, eta < 0, missing Inception weights."""

from __future__ import annotations

import pytest
import torch

from ddim.errors import DDIMError
from ddim.evaluation import evaluate


def _assert_nothing_written(out):
    assert not (out / "metrics.json").exists()
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
    fails([*eval_overrides(tiny_ckpt, out), "sampler.eta=-0.5"], "sampler.eta must be a number >= 0")
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
