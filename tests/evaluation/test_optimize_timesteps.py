"""task=optimize_timesteps end to end on the tiny checkpoint: timesteps.json, then sampler.timesteps_file in
another task (its sequence in metrics.json, its label in the NFE table), and the one-line refusals."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import pytest

from ddim.errors import DDIMError
from ddim.evaluation.dispatch import evaluate
from ddim.evaluation.reports.tables import nfe_pivot
from ddim.evaluation.tasks.sweep import grid
from ddim.samplers import make_sampler

CONF = Path(__file__).resolve().parents[2] / "conf"
SEARCH = [
    "task=optimize_timesteps",
    "sampler=unipc",
    "optimize_timesteps.nfe=3",
    "optimize_timesteps.n_x=8",
    "optimize_timesteps.reference_steps=30",
    "optimize_timesteps.grid=10",
    "optimize_timesteps.refine_rounds=1",
]


@pytest.fixture(scope="module")
def searched(tiny_ckpt, tmp_path_factory):
    """One search on the tiny checkpoint (T = 100) for UniPC-2 at 3 NFE: (its folder, its metrics)."""
    from hydra import compose, initialize_config_dir

    out = tmp_path_factory.mktemp("search") / "run"
    overrides = [
        f"ckpt={tiny_ckpt}", "data=digits", "data.image_size=8", "batch_size=8", "trainer.accelerator=cpu",
        "logger=none", f"paths.output_dir={out}", *SEARCH,
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        record = evaluate(compose(config_name="eval", overrides=overrides))
    return out, record


def test_the_search_writes_a_timesteps_file_bound_to_sampler_schedule_and_checkpoint(searched, tiny_ckpt):
    out, record = searched
    data = json.loads((out / "timesteps.json").read_text())
    assert data["timesteps"] == sorted(set(data["timesteps"])) and len(data["timesteps"]) == 3
    assert data["timesteps"][-1] == 99  # the chain starts at T - 1
    assert (
        data["nfe"] == 3 and data["sampler"]["name"] == "unipc" and data["sampler"]["settings"]["order"] == 2
    )
    assert data["schedule"]["num_timesteps"] == 100
    assert data["checkpoint"]["sha256"] == hashlib.sha256(tiny_ckpt.read_bytes()).hexdigest()
    search = data["search"]
    assert search["network_calls"] > search["reference_steps"] >= 30 and search["seconds"] > 0
    assert search["distance"] <= min(search["baselines"].values()) + 1e-12
    assert record["timesteps"] == data["timesteps"] and json.loads((out / "metrics.json").read_text())


def test_a_task_samples_with_the_file_and_records_its_sequence(
    searched, tiny_ckpt, eval_cfg, eval_overrides, tmp_path
):
    path = searched[0] / "timesteps.json"
    out = tmp_path / "sample"
    cfg = eval_cfg(
        [*eval_overrides(tiny_ckpt, out), "task=sample", "sampler=unipc", f"sampler.timesteps_file={path}"]
    )
    evaluate(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    timesteps = json.loads(path.read_text())["timesteps"]
    assert metrics["sequence"] == timesteps and metrics["nfe"] == 3 and metrics["steps"] == 3
    assert metrics["sampler_label"] == "unipc2_optimized" and metrics["skip_type"] == "optimized"
    assert metrics["sampler_settings"]["timesteps_file"] == str(path)
    # a sweep's NFE table keeps the optimized sequence as its own row
    other = {**metrics, "sampler_label": "unipc2_logsnr", "fid": 2.0}
    rows, cols, _ = nfe_pivot([{**metrics, "fid": 1.0}, other])
    assert rows == ["unipc2_optimized", "unipc2_logsnr"] and cols == [3]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["sampler=dpm_solver_pp"], "was searched for sampler=unipc, not sampler=dpm_solver_pp"),
        (["sampler=unipc", "sampler.order=3"], r"searched for sampler=unipc \(order=2 there, 3 here\)"),
    ],
)
def test_a_file_for_another_sampler_is_refused_with_one_line(
    searched, tiny_ckpt, eval_cfg, eval_overrides, exits_with_one_line, tmp_path, overrides, match
):
    path = searched[0] / "timesteps.json"
    out = tmp_path / "refused"
    cfg = eval_cfg(
        [*eval_overrides(tiny_ckpt, out), "task=sample", *overrides, f"sampler.timesteps_file={path}"]
    )
    assert re.search(match, exits_with_one_line(evaluate, cfg))
    assert not (out / "samples").exists()


def test_a_file_for_another_schedule_is_refused_and_another_checkpoint_only_warned(
    searched, make_checkpoint, tiny_ckpt, eval_cfg, eval_overrides, exits_with_one_line, tmp_path, caplog
):
    data = json.loads((searched[0] / "timesteps.json").read_text())
    data["schedule"]["betas_sha256"] = "f" * 64
    other_schedule = tmp_path / "other_schedule.json"
    other_schedule.write_text(json.dumps(data))
    cfg = eval_cfg([*eval_overrides(tiny_ckpt, tmp_path / "a"), "task=sample", "sampler=unipc",
                    f"sampler.timesteps_file={other_schedule}"])  # fmt: skip
    assert "searched for another noise schedule" in exits_with_one_line(evaluate, cfg)
    retrained = make_checkpoint(tmp_path / "retrained.ckpt", seed=1)
    cfg = eval_cfg([*eval_overrides(retrained, tmp_path / "b"), "task=sample", "sampler=unipc",
                    f"sampler.timesteps_file={searched[0] / 'timesteps.json'}"])  # fmt: skip
    with caplog.at_level(logging.WARNING):
        evaluate(cfg)
    assert any("searched on another checkpoint" in r.getMessage() for r in caplog.records)
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["sequence"] == data["timesteps"]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["sampler=ddim", "sampler.eta=1"], "searches timesteps for deterministic samplers"),
        (["sampler=heun", "optimize_timesteps.nfe=4"], "cannot make exactly 4 network calls"),
    ],
)
def test_the_task_refuses_a_stochastic_sampler_and_an_nfe_out_of_reach(
    tiny_ckpt, eval_cfg, eval_overrides, exits_with_one_line, tmp_path, overrides, match
):
    cfg = eval_cfg([*eval_overrides(tiny_ckpt, tmp_path / "run"), *SEARCH, *overrides])
    assert match in exits_with_one_line(evaluate, cfg)
    assert not (tmp_path / "run" / "timesteps.json").exists()


def test_the_sweep_task_refuses_a_timesteps_file(searched, tmp_path):
    data = json.loads((searched[0] / "timesteps.json").read_text())
    data["sampler"] = {"name": "ddim", "settings": make_sampler("ddim").settings()}
    path = tmp_path / "ddim.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DDIMError, match="sampler.timesteps_file fixes the sequence"):
        grid(make_sampler("ddim", timesteps_file=str(path)), [0.0], [10], False)
