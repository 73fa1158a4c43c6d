"""Fixtures of the evaluation tests: a tiny offline evaluation's overrides, the eval CLI in a subprocess, and
the tiny checkpoint's EMA network loaded independently of the evaluation code."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

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
