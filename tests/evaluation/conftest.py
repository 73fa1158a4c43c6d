"""Fixtures of the evaluation tests: a tiny offline evaluation's overrides, the eval CLI in a subprocess, and
the tiny checkpoint's EMA network loaded independently of the evaluation code."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"


@pytest.fixture
def eval_overrides() -> Callable[..., list[str]]:
    """eval_overrides(ckpt, out, cache=None): a tiny, offline, CPU evaluation of the digits model."""

    def make(ckpt: Path, out: Path, cache: Path | None = None) -> list[str]:
        return [
            f"ckpt={ckpt}",
            "data=digits",
            "data.image_size=8",
            "n_samples=12",
            "batch_size=2",
            "shard_size=4",
            "sampler.steps=3",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
            "logger=none",
            "fid.num_workers=0",
            "fid.reference_limit=64",
            f"fid.cache_dir={cache or out.parent / 'cache'}",
            f"paths.output_dir={out}",
        ]

    return make


@pytest.fixture
def run_eval_cli() -> Callable[..., subprocess.CompletedProcess]:
    """run_eval_cli(args, timeout=300): `python src/eval.py ARGS` in a subprocess (one thread, tests/ on the
    path for probes.TinyExtractor)."""

    def run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
        env["OMP_NUM_THREADS"] = "1"  # as _one_thread does in-process
        return subprocess.run(
            [sys.executable, str(ROOT / "src" / "eval.py"), *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture(scope="session")
def ema_unet(tiny_ckpt, tiny_net) -> torch.nn.Module:
    """The EMA network of tiny_ckpt, loaded directly (independent of the evaluation code)."""
    from ddim.nets.unet import UNet

    sd = torch.load(tiny_ckpt, weights_only=True)["state_dict"]
    net = UNet(**tiny_net).eval()
    net.load_state_dict({k[len("ema_net.") :]: v for k, v in sd.items() if k.startswith("ema_net.")})
    return net


@pytest.fixture
def labeled_figure() -> Callable[[Path | str], np.ndarray]:
    """labeled_figure(path): checks that <name>.png holds its <name>_raw.png grid unchanged at the bottom, with
    label ink (dark pixels on the white bands) above it and to its left; returns the raw grid's pixels."""

    def check(path: Path | str) -> np.ndarray:
        path = Path(path)
        labeled = np.asarray(Image.open(path))
        grid = np.asarray(Image.open(path.with_name(f"{path.stem}_raw{path.suffix}")))
        top, width = labeled.shape[0] - grid.shape[0], grid.shape[1]
        lefts = [
            x
            for x in range(labeled.shape[1] - width + 1)
            if np.array_equal(labeled[top:, x : x + width], grid)
        ]
        assert lefts, f"{path.name} does not contain {path.stem}_raw{path.suffix}"
        assert top > 0 and labeled[:top].min() < 128, "no title or column labels above the grid"
        assert lefts[0] > 0 and labeled[top:, : lefts[0]].min() < 128, "no row labels left of the grid"
        return grid

    return check
