"""Evaluation runs on a tiny U-Net (CPU): seeded sharded generation (1 vs 2 DDP processes, batch sizes,
resume), FID through the config path with a tiny extractor, and the reconstruction / visual tasks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddim.diffusion.schedule import Schedule
from ddim.evaluation import evaluate
from ddim.evaluation.generation import SampleWriter
from ddim.images import upscale_factor
from ddim.io import TEMP_SUFFIX, temporary_name
from ddim.metrics.shards import ShardPlan, read_images
from ddim.samplers import initial_noise, per_sample_generators, reconstruct, sample


def png_bytes(samples_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(samples_dir)): p.read_bytes() for p in sorted(samples_dir.glob("shard_*/*.png"))
    }


# ----------------------------------------------------------------------------------------------------------
# Generation: seeds, DDP, batch size, resume


def test_samples_depend_only_on_seed_and_index(
    tiny_ckpt, tmp_path, eval_cfg, eval_overrides, ema_unet, tiny_schedule
):
    out = tmp_path / "run"
    cfg = eval_cfg([*eval_overrides(tiny_ckpt, out), "task=sample", "sampler.eta=0.5"])
    record = evaluate(cfg)
    assert record["n_samples"] == 12 and record["generated"] == 12 and record["nfe"] == 3
    files = png_bytes(out / "samples")
    assert sorted(files) == [f"shard_{i // 4:05d}/{i:06d}.png" for i in range(12)]
    assert (out / "samples_grid.png").is_file() and (out / "metrics.json").is_file()

    # Independent of the evaluation code: sample 5 drawn directly with the sampler and its own generator.
    schedule = Schedule.from_config(**tiny_schedule)
    gens = per_sample_generators(0, [5])
    with torch.no_grad():
        x0 = sample(
            ema_unet, initial_noise((1, 1, 8, 8), gens), [0, 33, 66], schedule, eta=0.5, generator=gens
        )
    expected = ((x0.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[0, 0].numpy()
    got = torch.from_numpy(np.asarray(Image.open(out / "samples/shard_00001/000005.png")))
    assert torch.equal(got, torch.from_numpy(expected))


def test_batch_size_does_not_change_the_images(tiny_ckpt, tmp_path, eval_cfg, eval_overrides):
    runs = {}
    for bs in (1, 4):
        out = tmp_path / f"bs{bs}"
        evaluate(
            eval_cfg([*eval_overrides(tiny_ckpt, out), "task=sample", "sampler.eta=1.0", f"batch_size={bs}"])
        )
        runs[bs] = read_images(out / "samples", ShardPlan(12, 4)).int()
    # Per-sample generators make the noise identical; only float rounding of the batched network may differ.
    assert (runs[1] - runs[4]).abs().max().item() <= 1
    assert (runs[1] == runs[4]).float().mean().item() > 0.99


@pytest.mark.slow
def test_one_and_two_ddp_processes_write_identical_files(
    tiny_ckpt, tmp_path, eval_cfg, eval_overrides, run_eval_cli
):
    # A two-point grid: one DDP process group runs trainer.predict twice (the task=sweep route).
    grid = [
        "task=sweep",
        "sweep.etas=[1.0]",
        "sweep.steps=[3,5]",
        "sweep.sigma_hat=false",
        "sweep.metrics=false",
    ]
    common = [o for o in eval_overrides(tiny_ckpt, tmp_path) if not o.startswith("paths.output_dir")]
    common += [*grid, "n_samples=10"]
    one = tmp_path / "one"
    evaluate(eval_cfg([*common, f"paths.output_dir={one}"]))
    two = tmp_path / "two"
    proc = run_eval_cli([*common, "trainer.devices=2", "trainer.strategy=ddp", f"hydra.run.dir={two}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    points = json.loads((two / "metrics.json").read_text())["points"]
    assert [(p["world_size"], p["generated"]) for p in points] == [(2, 10), (2, 10)]
    for tag in ("eta1_S3_uniform", "eta1_S5_uniform"):
        a, b = png_bytes(one / "samples" / tag), png_bytes(two / "samples" / tag)
        assert len(a) == 10 and a == b, tag


def test_interrupted_generation_resumes_to_the_same_files(
    tiny_ckpt, tmp_path, monkeypatch, eval_cfg, eval_overrides
):
    overrides = [
        *eval_overrides(tiny_ckpt, tmp_path / "ref"),
        "task=sample",
        "sampler.eta=1.0",
        "batch_size=3",
    ]
    evaluate(eval_cfg(overrides))
    reference = png_bytes(tmp_path / "ref" / "samples")

    out = tmp_path / "run"
    overrides = [o if not o.startswith("paths.output_dir") else f"paths.output_dir={out}" for o in overrides]
    calls = {"n": 0}
    original = SampleWriter.generate

    def dies_on_third_batch(self, start, stop):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return original(self, start, stop)

    monkeypatch.setattr(SampleWriter, "generate", dies_on_third_batch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        evaluate(eval_cfg(overrides))
    samples = out / "samples"
    # Shard 0 (batches 1-2) is complete; nothing else exists as a shard; no metrics were written.
    assert sorted(p.name for p in samples.glob("shard_*")) == ["shard_00000"]
    assert not (out / "metrics.json").exists()

    monkeypatch.setattr(SampleWriter, "generate", original)
    # Also: a temp folder left by a killed writer, and a shard that lost a file.
    stale = temporary_name(samples / "shard_00002")
    stale.mkdir()
    (stale / "000008.png").write_bytes(b"half")
    record = evaluate(eval_cfg(overrides))
    assert record["generated"] == 8  # shards 1 and 2 only
    assert png_bytes(samples) == reference
    assert not list(samples.glob(f"*{TEMP_SUFFIX}"))

    (samples / "shard_00001" / "000005.png").unlink()
    record = evaluate(eval_cfg(overrides))
    assert record["generated"] == 4 and png_bytes(samples) == reference


def test_damaged_or_replaced_images_are_regenerated_to_the_same_bytes(
    tiny_ckpt, tmp_path, eval_cfg, eval_overrides, caplog
):
    from ddim.errors import DDIMError
    from ddim.metrics.shards import ShardImages

    overrides = [*eval_overrides(tiny_ckpt, tmp_path / "run"), "task=sample", "sampler.eta=1.0"]
    evaluate(eval_cfg(overrides))
    samples = tmp_path / "run" / "samples"
    reference = png_bytes(samples)
    corrupt, replaced = samples / "shard_00001" / "000005.png", samples / "shard_00002" / "000009.png"
    corrupt.write_bytes(corrupt.read_bytes()[:40])  # truncated: not a readable PNG any more
    Image.fromarray(np.full((8, 8), 7, dtype=np.uint8)).save(replaced)  # a valid PNG of other content
    with pytest.raises(DDIMError, match=r"shard_00001 failed verification \(000005.png differs"):
        ShardImages(samples, ShardPlan(12, 4))  # what FID reads: refused, never scored

    with caplog.at_level("WARNING", logger="ddim.evaluation.generation"):
        record = evaluate(eval_cfg(overrides))
    assert record["generated"] == 8  # the two damaged shards, nothing else
    assert png_bytes(samples) == reference
    (line,) = [r.getMessage() for r in caplog.records if "Regenerating" in r.getMessage()]
    assert "2 shard(s)" in line and "shard_00001: 000005.png" in line and "shard_00002: 000009.png" in line


def test_resuming_with_other_settings_is_refused(tiny_ckpt, tmp_path, eval_cfg, eval_overrides):
    from ddim.errors import DDIMError

    out = tmp_path / "run"
    evaluate(eval_cfg([*eval_overrides(tiny_ckpt, out), "task=sample", "n_samples=4"]))
    with pytest.raises(DDIMError, match="other settings"):
        evaluate(eval_cfg([*eval_overrides(tiny_ckpt, out), "task=sample", "n_samples=4", "sampler.eta=1.0"]))


# ----------------------------------------------------------------------------------------------------------
# FID through the config (tiny extractor plugged in by _target_), other tasks


def test_fid_task_writes_metrics_with_the_plugged_in_extractor(
    tiny_ckpt, tmp_path, eval_cfg, eval_overrides, tiny_extractor_override, tiny_extractor
):
    out = tmp_path / "run"
    record = evaluate(
        eval_cfg([*eval_overrides(tiny_ckpt, out), tiny_extractor_override, "sampler.skip_type=quadratic"])
    )
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("fid", "is", "n_samples", "eta", "steps", "skip_type", "variance", "nfe", "checkpoint"):
        assert key in saved, key
    for key in ("wall_time_s", "images_per_s", "generation_s"):
        assert saved[key] > 0
    assert saved["fid"] == pytest.approx(record["fid"]) and saved["fid"] > 0
    assert saved["reference_n"] == 64 and saved["skip_type"] == "quadratic"

    # Independent check of the number: tiny features of the written files vs. of the training digits.
    from ddim.data.digits import DigitsDataModule
    from ddim.images import to_uint8
    from ddim.metrics.fid import Statistics, frechet_distance

    ext = tiny_extractor
    gen = read_images(out / "samples", ShardPlan(12, 4)).expand(-1, 3, -1, -1)
    ref = torch.stack([DigitsDataModule(image_size=8).train_set[i] for i in range(64)])
    with torch.no_grad():
        s_gen = Statistics.from_features(ext(gen)[0])
        s_ref = Statistics.from_features(ext(to_uint8(ref).expand(-1, 3, -1, -1))[0])
    assert saved["fid"] == pytest.approx(
        frechet_distance(s_gen.mu, s_gen.sigma, s_ref.mu, s_ref.sigma), rel=1e-6
    )

    # The reference statistics are cached (keyed by the data config) and reused.
    cached = list((tmp_path / "cache" / "reference").glob("digits-*/stats-tiny-feat.npz"))
    assert len(cached) == 1
    quadratic = [tiny_extractor_override, "sampler.skip_type=quadratic"]
    again = evaluate(eval_cfg([*eval_overrides(tiny_ckpt, tmp_path / "run2"), *quadratic]))
    assert again["reference"] == str(cached[0]) and again["fid"] == pytest.approx(saved["fid"], rel=1e-12)

    # KID needs the reference features too: cached separately, and the FID is unchanged.
    with_kid = evaluate(eval_cfg([*eval_overrides(tiny_ckpt, tmp_path / "run3"), *quadratic, "fid.kid=true"]))
    assert with_kid["kid"] is not None and with_kid["fid"] == pytest.approx(saved["fid"], rel=1e-9)
    assert with_kid["reference"].endswith("stats-tiny-feat-features.npz")


def test_reconstruction_task_writes_table2(
    tiny_ckpt, tmp_path, eval_cfg, eval_overrides, ema_unet, tiny_schedule, labeled_figure
):
    out = tmp_path / "run"
    cfg = eval_cfg(
        [
            *eval_overrides(tiny_ckpt, out),
            "task=reconstruction",
            "reconstruction.steps=[2,5]",
            "reconstruction.n_images=5",
        ]
    )
    record = evaluate(cfg)
    for name in ("table2.md", "table2.csv", "reconstruction.png", "metrics.json"):
        assert (out / name).is_file(), name
    assert "S=2" in (out / "table2.md").read_text()

    from ddim.data.digits import DigitsDataModule

    schedule = Schedule.from_config(**tiny_schedule)
    x0 = torch.stack([DigitsDataModule(image_size=8).test_set[i] for i in range(5)])
    for steps, seq in ((2, [0, 50]), (5, [0, 20, 40, 60, 80])):
        with torch.no_grad():
            rec = reconstruct(ema_unet, x0, seq, schedule)
        expected = ((rec.clamp(-1, 1) - x0) / 2).pow(2).mean().item()
        assert record["mse"][str(steps)] == pytest.approx(expected, rel=1e-5)
    # Figure rows: original, S=2, S=5; 5 columns of 8x8 images with 2-pixel padding (labelled, and raw).
    k = upscale_factor(5 * 10 + 2)  # small grids are enlarged k times (nearest neighbour)
    assert labeled_figure(out / "reconstruction.png").shape == (k * (3 * 10 + 2), k * (5 * 10 + 2))
    assert record["columns_of_figure"] == [0, 1, 2, 3, 4]


def test_the_image_size_comes_from_the_checkpoint_unless_given(tiny_ckpt, tmp_path, eval_cfg, eval_overrides):
    # No data.image_size: digits (16x16 by default) is read at the checkpoint's 8x8.
    overrides = [o for o in eval_overrides(tiny_ckpt, tmp_path / "run") if o != "data.image_size=8"]
    cfg = eval_cfg(
        [*overrides, "task=reconstruction", "reconstruction.steps=[2]", "reconstruction.n_images=2"]
    )
    assert cfg.data.image_size is None
    assert evaluate(cfg)["n_images"] == 2


@pytest.mark.parametrize(
    "task, extra, rows, cols",
    [
        ("interpolation", ["interpolation.n_pairs=2", "interpolation.n_points=4", "sampler.steps=3"], 2, 4),
        ("consistency", ["consistency.n_samples=3", "consistency.steps=[2,3,5]"], 3, 3),
        ("progressive", ["progressive.n_samples=2", "progressive.every=2", "sampler.steps=5"], 2, 3),
    ],
)
def test_visual_tasks_write_their_figure(
    tiny_ckpt, tmp_path, task, extra, rows, cols, eval_cfg, eval_overrides, labeled_figure
):
    out = tmp_path / task
    record = evaluate(eval_cfg([*eval_overrides(tiny_ckpt, out), f"task={task}", *extra]))
    figure = out / f"{task}.png"
    assert record["figure"] == str(figure)
    k = upscale_factor(cols * 10 + 2)
    assert labeled_figure(figure).shape[:2] == (k * (rows * 10 + 2), k * (cols * 10 + 2))
    assert json.loads((out / "metrics.json").read_text())["task"] == task


def test_wandb_offline_logs_the_figure(tiny_ckpt, tmp_path, monkeypatch, eval_cfg, eval_overrides):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    overrides = [o for o in eval_overrides(tiny_ckpt, out) if o != "logger=none"]
    evaluate(
        eval_cfg(
            [
                *overrides,
                "logger=wandb",
                "task=consistency",
                "consistency.n_samples=2",
                "consistency.steps=[2]",
            ]
        )
    )
    media = list(out.glob("wandb/offline-run-*/files/media/images/*.png"))
    assert media, sorted(str(p) for p in out.rglob("*"))[:50]
    import wandb

    assert wandb.run is None  # finished, so the next job of a multirun gets its own run


# ----------------------------------------------------------------------------------------------------------
# The task registry: one module + one TASKS line + one conf/task file per task


def test_every_task_has_a_module_a_registry_line_and_a_config(compose_config):
    from ddim.evaluation.settings import check_eval_config
    from ddim.evaluation.tasks import TASKS

    conf_tasks = sorted(p.stem for p in (Path(__file__).parents[2] / "conf" / "task").glob("*.yaml"))
    assert sorted(TASKS) == conf_tasks
    for name in conf_tasks:
        cfg = compose_config(["ckpt=x", f"task={name}", "paths.output_dir=out"], config_name="eval")
        assert cfg.task_type == name
        check_eval_config(cfg)  # the config node gives exactly run()'s keyword options, of their types


def test_task_options_are_checked_by_name(compose_config):
    from ddim.errors import DDIMError
    from ddim.evaluation.settings import check_eval_config
    from ddim.evaluation.tasks import get_task

    cfg = compose_config(
        ["ckpt=x", "task=reconstruction", "+reconstruction.n_imgs=5", "paths.output_dir=out"],
        config_name="eval",
    )
    with pytest.raises(
        DDIMError,
        match=r"^reconstruction.n_imgs is not a setting of task=reconstruction; its settings are: steps, n_images",
    ):
        check_eval_config(cfg)
    with pytest.raises(DDIMError, match="Unknown task 'bpd'; choose task= one of fid, sample"):
        get_task("bpd")


TOY_YAML = """# A sampler from outside the package: its class (tests/probes.py) and this file are all it takes.
_target_: probes.Toy
steps: 4
skip_type: uniform
timesteps: null
scale: 0.5
"""


def test_a_sampler_from_outside_the_package_runs_through_src_eval(
    tiny_ckpt, tmp_path, monkeypatch, hydra_main
):
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1]))  # tests/, where probes.py lives
    (tmp_path / "conf" / "sampler").mkdir(parents=True)
    (tmp_path / "conf" / "sampler" / "toy.yaml").write_text(TOY_YAML)
    args = [f"ckpt={tiny_ckpt}", "data=digits", "task=sample", "n_samples=4", "batch_size=4", "shard_size=4",
            "trainer.accelerator=cpu", "trainer.devices=1", "logger=none", "sampler=toy",
            f"hydra.searchpath=[file://{tmp_path / 'conf'}]"]  # fmt: skip
    code, output = hydra_main("eval.py", [*args, f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 0, output[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["sampler"] == "toy" and metrics["sampler_label"] == "toy_uniform" and metrics["nfe"] == 4
    assert metrics["sampler_settings"]["scale"] == 0.5
    # Its settings are typed like every built-in sampler's: one line naming the key, nothing written.
    code, output = hydra_main("eval.py", [*args, "sampler.scale=-1", f"hydra.run.dir={tmp_path / 'bad'}"])
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2 and lines == [
        "Error: sampler.scale=-1 is invalid: it must be a number > 0, e.g. sampler.scale=1.0."
    ]
    assert not (tmp_path / "bad").exists()
