"""ddim.checkpoints: safe loading (no code runs from a checkpoint), clear messages for empty files, and our
checkpoints rebuilding the U-Net from its recorded config rather than from tensor shapes."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import pytest
import torch

from ddim import checkpoints
from ddim.checkpoints import (
    EMA_PREFIX,
    NET_PREFIX,
    CheckpointError,
    load_unet,
    read_checkpoint,
    safe_load,
)
from ddim.evaluation import evaluate
from ddim.nets.unet import UNet
from ddim.training.module import DiffusionModule

TINY = dict(
    in_channels=1, out_channels=1, resolution=8, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=()
)


class Payload:
    """Unpickling this creates the marker file: what a hostile checkpoint would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def lightning_checkpoint(path: Path, extra: dict | None = None) -> Path:
    """A checkpoint laid out as training writes it, plus `extra` top-level entries."""
    module = DiffusionModule(net=dict(TINY))
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), **(extra or {})}
    torch.save(ckpt, path)
    return path


@pytest.fixture
def hostile(tmp_path):
    marker = tmp_path / "pwned"
    path = lightning_checkpoint(tmp_path / "hostile.ckpt", {"callbacks": {"evil": Payload(marker)}})
    return path, marker


def test_pickle_payload_is_refused_and_never_runs(hostile):
    path, marker = hostile
    for load in (safe_load, read_checkpoint, load_unet):
        with pytest.raises(CheckpointError, match=r"holds Python objects besides tensors \(io.open\)"):
            load(path)
    assert not marker.exists()


def test_eval_refuses_a_pickle_payload_in_one_line(hostile, tmp_path, eval_cfg, exits_with_one_line):
    path, marker = hostile
    out = tmp_path / "out"
    cfg = eval_cfg([f"ckpt={path}", "task=sample", "logger=none", f"paths.output_dir={out}"])
    message = exits_with_one_line(evaluate, cfg)
    assert "holds Python objects besides tensors" in message and "re-save" in message
    assert not marker.exists()
    assert not list(out.glob("**/*.png")) and not (out / "metrics.json").exists()


def test_the_refusal_says_how_to_resave_and_that_works(tmp_path):
    # A trusted file with an object the weights-only unpickler rejects (as older Lightning files may carry).
    path = lightning_checkpoint(tmp_path / "old.ckpt", {"args": argparse.Namespace(lr=1)})
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and "argparse.Namespace" in message
    recipe = re.search(r"session: (.*?) for a Lightning checkpoint", message).group(1)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(recipe, {"torch": torch})  # the user's trusted session
    finally:
        os.chdir(cwd)
    model, config = load_unet(tmp_path / "safe.ckpt")
    assert config == {**TINY, "dropout": 0.1}
    assert read_checkpoint(tmp_path / "safe.ckpt").hyper_parameters["schedule"]["num_timesteps"] == 1000


def test_empty_and_missing_files_give_one_clear_line(tmp_path):
    empty = tmp_path / "last.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is empty \(0 bytes\).*earlier step_\*\.ckpt"):
        read_checkpoint(empty)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        safe_load(tmp_path / "nope.ckpt")
    # A file that ends early with an empty error text still gets a message (not an IndexError).
    torch.save({"w": torch.zeros(3)}, tmp_path / "cut.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "cut.pt").read_bytes()[:20])
    with pytest.raises(CheckpointError, match="could not read checkpoint"):
        safe_load(tmp_path / "cut.pt")


def test_our_checkpoints_rebuild_from_the_recorded_config(tmp_path, monkeypatch):
    unet = UNet(**TINY)
    assert unet.config == {**TINY, "ch_mult": [1, 2], "attn_resolutions": [], "dropout": 0.1}
    assert UNet(**unet.config).config == unet.config
    module = DiffusionModule(
        net={"in_channels": 1, "out_channels": 1, "resolution": 8, "ch": 32, "ch_mult": [1, 2]}
    )
    assert module.hparams["net"] == module.net.config  # complete, defaults included
    assert {k.split(".")[0] + "." for k in module.state_dict()} == {NET_PREFIX, EMA_PREFIX}
    path = tmp_path / "ours.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)

    def no_guessing(*args, **kwargs):
        raise AssertionError("config inferred from tensors for our own checkpoint")

    monkeypatch.setattr(checkpoints.files, "infer_unet_config", no_guessing)
    model, config = load_unet(path)
    assert config == {**module.net.config, "ch_mult": (1, 2), "attn_resolutions": (16,)}
    for a, b in zip(model.state_dict().values(), module.ema_net.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_file_of_garbage_is_called_damaged_without_torchs_retry_advice(tmp_path):
    # torch's weights-only error opens with "Re-running torch.load with weights_only set to False": advice that
    # is wrong for a damaged file and unsafe for a hostile one, so the message must carry the unpickler's finding.
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(bytes(range(7, 256)) * 4)
    with pytest.raises(CheckpointError) as info:
        safe_load(junk)
    message = str(info.value)
    assert "corrupt, truncated or not a PyTorch" in message
    assert "weights_only" not in message and "\n" not in message
