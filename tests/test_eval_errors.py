"""Mistakes a user can make end with one clear message, before any sample is generated and without a
metrics.json: missing/unreadable/wrong-shape checkpoint, steps > T, eta < 0, missing Inception weights."""

from __future__ import annotations

import pytest
import torch
from test_eval import TINY_NET, base_overrides, make_cfg, make_tiny_checkpoint, run_cli, session_checkpoint
from test_fid import session_detector

from ddim.errors import DDIMError
from ddim.evaluation import evaluate


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks on a small shared CPU: one intra-op thread avoids oversubscription stalls that cost
    far more than the second core gains."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    return session_checkpoint(tmp_path_factory)


@pytest.fixture(scope="session")
def detector_weights(tmp_path_factory):
    return session_detector(tmp_path_factory)


def _assert_nothing_written(out):
    assert not (out / "metrics.json").exists()
    assert not list(out.glob("samples/shard_*")) and not list(out.glob("*.png"))


def _fails(overrides, match):
    with pytest.raises(DDIMError, match=match) as err:
        evaluate(make_cfg(overrides))
    assert "\n" not in str(err.value).strip()
    return err.value


def test_missing_checkpoint_argument_exits_with_one_line(tmp_path):
    proc = run_cli(["logger=none", f"hydra.run.dir={tmp_path / 'run'}"])
    assert proc.returncode == 2
    assert "No checkpoint given: pass ckpt=PATH" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    _assert_nothing_written(tmp_path / "run")


def test_checkpoint_file_not_found(tmp_path):
    out = tmp_path / "run"
    _fails(base_overrides(tmp_path / "nope.ckpt", out), "checkpoint not found")
    _assert_nothing_written(out)


def test_checkpoint_of_the_wrong_shape(tmp_path):
    # The hyper-parameters say ch=32 but the tensors come from ch=64.
    path = make_tiny_checkpoint(tmp_path / "big.ckpt", net_kwargs={**TINY_NET, "ch": 64})
    ckpt = torch.load(path, weights_only=True)
    ckpt["hyper_parameters"]["net"]["ch"] = 32
    torch.save(ckpt, path)
    out = tmp_path / "run"
    _fails(base_overrides(path, out), "shape mismatch|do not match")
    _assert_nothing_written(out)


def test_model_and_data_shapes_must_agree(tiny_ckpt, tmp_path):
    out = tmp_path / "run"
    overrides = [
        o if o != "data.image_size=8" else "data.image_size=16" for o in base_overrides(tiny_ckpt, out)
    ]
    _fails(overrides, r"shape \(1, 16, 16\).*\(1, 8, 8\)")
    _assert_nothing_written(out)


def test_steps_larger_than_T(tiny_ckpt, tmp_path):
    out = tmp_path / "run"
    _fails(
        [*base_overrides(tiny_ckpt, out), "sampler.steps=101"],
        r"sampler.steps must be an integer in \[1, 100\]",
    )
    _assert_nothing_written(out)


def test_negative_eta(tiny_ckpt, tmp_path):
    out = tmp_path / "run"
    _fails([*base_overrides(tiny_ckpt, out), "sampler.eta=-0.5"], "sampler.eta must be a number >= 0")
    _assert_nothing_written(out)
    # The grid is validated point by point before the first image, too.
    _fails([*base_overrides(tiny_ckpt, out), "task=sweep", "sweep.steps=[2,500]"], "sampler.steps")
    _assert_nothing_written(out)


def test_missing_inception_weights_offline_stop_before_generating(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    out = tmp_path / "run"
    err = _fails(
        [*base_overrides(tiny_ckpt, out), "fid=torch_fidelity", "fid.download=false"],
        "weights-inception-2015-12-05-6726825d.pth",
    )
    assert str(tmp_path / "torch-home") in str(err) and "Nothing was generated" in str(err)
    _assert_nothing_written(out)
    _fails([*base_overrides(tiny_ckpt, out), f"fid.detector_path={tmp_path / 'x.pt'}"], "does not exist")
    _assert_nothing_written(out)


def test_inception_score_with_the_detector_is_refused_before_generating(
    tiny_ckpt, tmp_path, detector_weights
):
    out = tmp_path / "run"
    cache = detector_weights.path.parents[1]  # reuse the conversion made once per session
    _fails([*base_overrides(tiny_ckpt, out, cache=cache), "fid=detector", "fid.isc=true"], "IS needs")
    _assert_nothing_written(out)
