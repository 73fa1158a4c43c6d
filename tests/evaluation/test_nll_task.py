"""task=nll and task=rate_distortion on the tiny digits checkpoint, and learned-variance / v checkpoints."""

import csv
import json

import pytest
import torch

from ddim.errors import DDIMError
from ddim.evaluation import evaluate


def _run(eval_cfg, eval_overrides, ckpt, out, *extra):
    return evaluate(eval_cfg([*eval_overrides(ckpt, out), *extra]))


def test_nll_exact_breakdown_csv_and_resume(eval_cfg, eval_overrides, tiny_ckpt, tmp_path, caplog):
    args = ("task=nll", "nll.n_images=6", "nll.batch_size=4", "nll.max_batch=64")
    with caplog.at_level("INFO", logger="ddim.evaluation.tasks.nll"):
        m = _run(eval_cfg, eval_overrides, tiny_ckpt, tmp_path / "a", *args)
    result = f"NLL {m['bits_per_dim']:.4f} +- {m['bits_per_dim_ci95']:.4f} bits/dim (95%; nll.mode=exact, 6 test images)"
    assert result in caplog.messages  # eval.log has the result, as it has FID's
    assert m["bits_per_dim"] == pytest.approx(m["prior_L_T"] + m["kl_sum_L_t"] + m["decoder_L_0"], rel=1e-9)
    assert m["images_computed"] == 6 and m["bits_per_dim"] > 0 and m["world_size"] == 1
    rows = list(csv.DictReader(open(tmp_path / "a" / "nll_terms.csv")))
    assert len(rows) == 100 and rows[0]["term"] == "L_0 decoder"
    assert sum(float(r["bits_per_dim"]) for r in rows) == pytest.approx(m["kl_sum_L_t"] + m["decoder_L_0"])
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["bits_per_dim"] == m["bits_per_dim"]
    # a second run in the same directory reads the per-batch files: nothing recomputed, same number
    again = _run(eval_cfg, eval_overrides, tiny_ckpt, tmp_path / "a", *args)
    assert again["images_computed"] == 0 and again["bits_per_dim"] == m["bits_per_dim"]
    # batch sizes do not change a seeded result
    other = _run(eval_cfg, eval_overrides, tiny_ckpt, tmp_path / "b", "task=nll", "nll.n_images=6",
                 "nll.batch_size=3", "nll.max_batch=37")  # fmt: skip
    assert other["bits_per_dim"] == pytest.approx(m["bits_per_dim"], rel=1e-6)
    # Monte Carlo on the same images: L_T and L_0 are computed exactly (the same noise as exact mode), only
    # the KL sum is estimated, and the estimate lies within its confidence interval of the exact bound
    mc = _run(eval_cfg, eval_overrides, tiny_ckpt, tmp_path / "c", "task=nll", "nll.n_images=6",
              "nll.mode=mc", "nll.timesteps_per_image=6")  # fmt: skip
    assert mc["network_calls_per_image"] == 7 and mc["images_computed"] == 6
    assert mc["decoder_L_0"] == pytest.approx(m["decoder_L_0"], rel=1e-6)
    assert mc["prior_L_T"] == pytest.approx(m["prior_L_T"], rel=1e-12)
    assert 0 < abs(mc["bits_per_dim"] - m["bits_per_dim"]) < mc["bits_per_dim_ci95"] < 0.2 * m["bits_per_dim"]


@pytest.mark.slow
def test_nll_on_two_ddp_processes_writes_the_same_batch_files(
    eval_cfg, eval_overrides, tiny_ckpt, tmp_path, run_eval_cli
):
    """Batches of images are split round-robin over the ranks (as generation's shards); rank 0 gathers."""
    common = [o for o in eval_overrides(tiny_ckpt, tmp_path) if not o.startswith("paths.output_dir")]
    common += ["task=nll", "nll.n_images=7", "nll.batch_size=2", "nll.mode=mc", "nll.timesteps_per_image=5"]
    one = evaluate(eval_cfg([*common, f"paths.output_dir={tmp_path / 'one'}"]))
    proc = run_eval_cli(
        [*common, "trainer.devices=2", "trainer.strategy=ddp", f"hydra.run.dir={tmp_path / 'two'}"]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert (two["world_size"], two["images_computed"]) == (2, 7) and one["world_size"] == 1
    assert two["bits_per_dim"] == one["bits_per_dim"]
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one" / "nll").rglob("*.pt"))
    assert len(files) == 4
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes(), f


def test_nll_terms_of_an_image_do_not_depend_on_its_batch(tiny_ckpt):
    # the terms of images 3..5 computed alone equal those rows of a batch of images 0..5
    from ddim.checkpoints import build_unet, read_checkpoint
    from ddim.diffusion.likelihood import BoundTerms
    from ddim.diffusion.parameterization import ModelFn, ModelSpec
    from ddim.diffusion.schedule import Schedule
    from ddim.evaluation.tasks.nll import bound_for_images

    ckpt = read_checkpoint(str(tiny_ckpt))
    schedule = Schedule.from_config(**ckpt.hyper_parameters["schedule"])
    net = ModelFn(build_unet(ckpt.state_dict, ckpt.config), ModelSpec(), schedule).eval()
    x0 = (torch.randint(0, 256, (6, 1, 8, 8)) / 127.5 - 1).float()
    kw = dict(seed=3, mode="mc", draws=5, max_batch=16, clip_x0=True)
    with torch.inference_mode():
        whole = bound_for_images(net, schedule, x0, range(0, 6), **kw)
        part = bound_for_images(net, schedule, x0[3:], range(3, 6), **kw)
    for field in BoundTerms._fields:
        torch.testing.assert_close(getattr(part, field), getattr(whole, field)[3:], rtol=1e-5, atol=1e-6)


def test_rate_distortion_split_at_t1(eval_cfg, eval_overrides, tiny_ckpt, tmp_path):
    m = _run(
        eval_cfg, eval_overrides, tiny_ckpt, tmp_path, "task=rate_distortion", "rate_distortion.n_images=2"
    )
    assert m["rate_bits_per_dim"] + m["distortion_bits_per_dim"] == pytest.approx(m["bits_per_dim"])
    rows = list(csv.DictReader(open(tmp_path / "rate_distortion.csv")))
    rates = [float(r["rate_bits_per_dim"]) for r in rows]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))  # rate grows as t goes down
    assert rates[0] == pytest.approx(m["rate_bits_per_dim"])
    assert (tmp_path / "rate_distortion.png").is_file()


@pytest.mark.parametrize(
    "kw", [dict(parameterization="v", variance="learned_range"), dict(parameterization="mu")]
)
def test_checkpoints_of_other_parameterizations_evaluate_with_no_flags(kw, eval_cfg, eval_overrides, tiny_net,
                                                                        tiny_schedule, tmp_path):  # fmt: skip
    from ddim.training.module import DiffusionModule

    module = DiffusionModule(net=tiny_net, schedule=tiny_schedule, loss="hybrid" if "variance" in kw else "simple",
                             **kw)  # fmt: skip
    path = tmp_path / "m.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    m = _run(eval_cfg, eval_overrides, path, tmp_path / "nll", "task=nll", "nll.n_images=1")
    assert m["bits_per_dim"] > 0
    s = _run(eval_cfg, eval_overrides, path, tmp_path / "s", "task=sample", "sampler.eta=1", "n_samples=2")
    assert s is not None


def test_nll_refuses_other_shapes_and_bad_options(eval_cfg, eval_overrides, tiny_ckpt, tmp_path):
    with pytest.raises(DDIMError, match=r"shape \(1, 16, 16\) but the checkpoint's model makes \(1, 8, 8\)"):
        _run(eval_cfg, eval_overrides, tiny_ckpt, tmp_path / "a", "task=nll", "data.image_size=16")
    with pytest.raises(DDIMError, match="nll.mode"):
        _run(eval_cfg, eval_overrides, tiny_ckpt, tmp_path / "b", "task=nll", "nll.mode=importance")


def test_ablation_table_rows_come_from_checkpoint_hyper_parameters(tiny_net, tiny_schedule, tmp_path):
    from ddim.evaluation.reports.ablation import collect, write_table
    from ddim.io import write_json
    from ddim.training.module import DiffusionModule

    files = []
    for i, kw in enumerate([dict(parameterization="mu", loss="vlb"), dict()]):
        module = DiffusionModule(net=tiny_net, schedule=tiny_schedule, **kw)
        ckpt = tmp_path / f"train{i}" / "checkpoints" / "last.ckpt"
        ckpt.parent.mkdir(parents=True)
        if i == 0:  # the training run's own metrics.json gives the row its training time
            write_json(tmp_path / "train0" / "metrics.json", {"global_step": 600, "wall_time_s": 123.4})
        torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, ckpt)
        files.append(
            write_json(
                tmp_path / f"fid{i}" / "metrics.json",
                {"task": "fid", "checkpoint": str(ckpt), "fid": 10.0 + i},
            )
        )
        files.append(
            write_json(
                tmp_path / f"nll{i}" / "metrics.json",
                {"task": "nll", "checkpoint": str(ckpt), "bits_per_dim": 3.0 + i, "bits_per_dim_ci95": 0.25},
            )
        )
    # The second checkpoint's FID also measured with another sampler: a row of its own, not merged.
    files.append(
        write_json(
            tmp_path / "fid1_heun" / "metrics.json",
            {
                "task": "fid",
                "checkpoint": str(ckpt),
                "fid": 20.0,
                "sampler_label": "heun_karras",
                "steps": 10,
            },
        )
    )
    rows = collect(files)
    assert [(r["parameterization"], r["loss"], r["sampler"], r["fid"], r["nll_bits_per_dim"]) for r in rows] == [
        ("mu", "vlb", None, 10.0, 3.0), ("eps", "simple", None, 11.0, 4.0),
        ("eps", "simple", "heun_karras, 10 steps", 20.0, 4.0)]  # fmt: skip
    assert rows[0]["paper_fid_cifar10"] == 13.22 and rows[1]["paper_fid_cifar10"] == 3.17
    assert rows[1]["train_time_s"] is None  # no training metrics.json beside that checkpoint
    paths = write_table(rows, tmp_path)
    assert "| mu | vlb | fixed_large | - | 10.00 | 3.00 | 0.25 | 123.40 | 13.22 |" in paths["md"].read_text()


def test_ablation_without_arguments_prints_its_usage(tmp_path):
    from ddim.evaluation.reports.ablation import main

    with pytest.raises(SystemExit, match="^usage: python -m ddim.evaluation.reports.ablation OUT_DIR"):
        main([])
    with pytest.raises(SystemExit, match="No metrics.json under"):
        main([str(tmp_path / "out"), str(tmp_path)])
