"""benchmarks/gpu_acceptance.py on the CPU: the --tiny run passes every check it can make without a GPU, and
the command lines of the full-size GPU run compose, so the script works the day a GPU is lent."""

from __future__ import annotations

import argparse
import json
import os
import runpy
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

CORRECTNESS_CHECKS = (
    "tiny b2 grad checkpointing: saved activations ratio",
    "30 steps reached",
    "loss falls: last / first quarter of logged losses",
    "checkpoint written (last.ckpt)",
    "ckpt_path=last resumes",
    "batched and loop give the same bits/dim",
    "eval's FID = FID recomputed here from its sample files",
)


@pytest.fixture(scope="module")
def acceptance() -> dict:
    return runpy.run_path(str(ROOT / "benchmarks" / "gpu_acceptance.py"))


@pytest.mark.slow
def test_tiny_cpu_run_passes_its_checks_and_writes_the_report(acceptance, tmp_path):
    out = tmp_path / "out"
    code = acceptance["main"](
        ["--tiny", "--device", "cpu", "--out", str(out), "--work-dir", str(tmp_path / "w")]
    )
    report = json.loads((out / "gpu_acceptance.json").read_text())
    rows = report["rows"]
    assert code == 0 and report["failed"] == 0, [r for r in rows if r["ok"] is False]
    assert (out / "gpu_acceptance.txt").read_text().startswith("section")
    assert list(dict.fromkeys(r["section"] for r in rows)) == list(acceptance["SECTIONS"])
    assert not any(r["value"] in ("error", "missing") for r in rows)
    checks = {r["check"]: r for r in rows}
    for check in CORRECTNESS_CHECKS:  # judged in --tiny runs too
        assert checks[check]["ok"] is True, check
    # Speeds are measured but not judged at tiny sizes.
    speed = checks["tiny b2 train step bf16: ours/diffusers speed"]
    assert speed["ok"] is None and speed["value"] > 0
    assert all(checks[f"{s} NFE 4 batch 4: images/s"]["value"] > 0 for s in ("ddim eta=0", "dpm_solver_pp"))
    # What needs a GPU says why it did not run.
    assert "needs 2" in checks["2-process DDP training step"]["note"]
    assert "--tiny" in checks["torch.compile rows"]["note"]


def test_full_size_command_lines_compose(acceptance, compose_config, tmp_path):
    """The GPU run's train.py and eval.py overrides are valid for the real configs (a typo there would only
    show on the GPU)."""
    args = argparse.Namespace(tiny=False, inception_fp16=None, budget_s=450.0)
    ctx = acceptance["Context"](args, acceptance["GPU_SIZES"], torch.device("cuda"), tmp_path)
    ctx.images_dir = tmp_path / "images"  # not written: composing reads no files

    def composed(name: str, overrides: list[str]):
        return compose_config([o for o in overrides if not o.startswith("hydra.")], name)

    train = composed("train", acceptance["train_overrides"](ctx, tmp_path / "run"))
    assert train.model.compile is True and train.trainer.precision == "bf16-mixed"
    assert train.trainer.accelerator == "gpu" and train.trainer.devices == 1
    assert train.data.batch_size == 128 and train.model.optim.warmup_steps == 50
    assert "sample_grid" not in train.callbacks and train.data._target_.endswith("ImageFolderDataModule")
    run = composed(
        "eval", [*acceptance["eval_overrides"](ctx, tmp_path / "last.ckpt", 0, tmp_path), "task=fid"]
    )
    assert run.n_samples == 10_000 and run.batch_size == 500 and run.sampler.steps == 10
    assert run.task_type == "fid" and run.fid.num_workers == min(4, os.cpu_count() or 1)


def test_unknown_section_is_refused_in_one_line(acceptance, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        acceptance["main"](["--tiny", "--out", str(tmp_path), "--sections", "unet,gpus"])
    assert info.value.code == 2
    assert "unknown sections ['gpus']" in capsys.readouterr().err
