"""eta x S sweeps on a tiny model end with Table 1 (Markdown + CSV) and the FID-vs-S plot: through the Hydra
multirun (table written by the on_multirun_end callback) and through the single-job grid task."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from ddim.evaluation import evaluate
from ddim.evaluation.reports.tables import (
    TABLE1_FILES,
    is_ddim,
    nfe_pivot,
    pivot,
    write_nfe_table,
    write_table1,
)


def _table(path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {r["row"]: r for r in rows}


def test_single_job_grid_writes_table1_and_plot(
    tiny_ckpt, tmp_path, eval_cfg, eval_overrides, tiny_extractor_override
):
    out = tmp_path / "grid"
    overrides = [
        *eval_overrides(tiny_ckpt, out),
        tiny_extractor_override,
        "n_samples=6",
        "shard_size=3",
        "batch_size=3",
    ]
    summary = evaluate(
        eval_cfg([*overrides, "task=sweep", "sweep.etas=[0,1]", "sweep.steps=[2,3]", "sweep.sigma_hat=true"])
    )
    for name in TABLE1_FILES:
        assert (out / name).is_file(), name
    assert len(summary["points"]) == 6
    table = _table(out / "table1.csv")
    assert list(table) == ["eta = 0.0", "eta = 1.0", "sigma_hat"]
    for point in summary["points"]:
        label = "sigma_hat" if point["variance"] == "sigma_hat" else f"eta = {point['eta']:.1f}"
        assert float(table[label][f"S={point['steps']}"]) == pytest.approx(point["fid"], rel=1e-5)
        assert point["n_samples"] == 6
    md = (out / "table1.md").read_text()
    assert "| sigma_hat |" in md and "S=2" in md and "S=3" in md
    assert Image.open(out / "fid_vs_steps.png").size[0] > 100
    assert json.loads((out / "metrics.json").read_text())["task"] == "sweep"


@pytest.mark.slow
def test_multirun_ends_with_table1_and_plot(
    tiny_ckpt, tmp_path, eval_cfg, eval_overrides, hydra_main, tiny_extractor_override
):
    # `src/eval.py -m ...` in-process: the jobs, callbacks and exit code of the real command line.
    sweep_dir = tmp_path / "multirun"
    overrides = [o for o in eval_overrides(tiny_ckpt, tmp_path / "x") if not o.startswith("paths.output_dir")]
    common = [
        "-m",
        *overrides,
        tiny_extractor_override,
        "n_samples=6",
        "shard_size=3",
        "batch_size=3",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    # S=500 > T=100: those two jobs fail with their message, the other four still run and make the table.
    code, output = hydra_main("eval.py", [*common, "sampler.eta=0,1", "sampler.steps=2,3,500"])
    assert code == 1, output[-3000:]
    assert "sampler.steps must be an integer in [1, 100]" in output
    assert "2 job(s) failed" in output and "Traceback" not in output
    for name in TABLE1_FILES:
        assert (sweep_dir / name).is_file(), name
    table = _table(sweep_dir / "table1.csv")
    assert list(table) == ["eta = 0.0", "eta = 1.0"] and set(table["eta = 0.0"]) == {
        "row",
        "S=2",
        "S=3",
        "S=500",
    }
    assert table["eta = 0.0"]["S=500"] == table["eta = 1.0"]["S=500"] == ""
    assert (
        "| eta = 0.0 |" in (sweep_dir / "table1.md").read_text()
        and " - |" in (sweep_dir / "table1.md").read_text()
    )
    failed = sorted(sweep_dir.glob("*/failed.json"))
    assert [p.parent.name.split("-")[0] for p in failed] == ["eta0_S500_uniform", "eta1_S500_uniform"]
    jobs = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/metrics.json"))]
    assert len(jobs) == 4
    for job in jobs:
        assert float(table[f"eta = {job['eta']:.1f}"][f"S={job['steps']}"]) == pytest.approx(
            job["fid"], rel=1e-5
        )

    # The README's second multirun into the same folder adds the sigma_hat row (no collision with job 0).
    code, output = hydra_main("eval.py", [*common, "sampler=ddpm_sigma_hat", "sampler.steps=2"])
    assert code == 0, output[-3000:]
    table = _table(sweep_dir / "table1.csv")
    assert list(table) == ["eta = 0.0", "eta = 1.0", "sigma_hat"] and table["sigma_hat"]["S=2"] != ""
    assert len(list(sweep_dir.glob("*/metrics.json"))) == 5
    assert float(table["eta = 0.0"]["S=2"]) == pytest.approx(jobs[0]["fid"], rel=1e-5)

    # Fast solvers in the same folder: one quality-per-NFE table (rows: sampler settings, columns: NFE).
    code, output = hydra_main("eval.py", [*common, "sampler=dpm_solver_pp,heun", "sampler.steps=3"])
    assert code == 0, output[-3000:]
    solver_jobs = {
        j["sampler"]: j for j in (json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json"))
    }
    assert solver_jobs["dpm_solver_pp"]["nfe"] == 3 and solver_jobs["heun"]["nfe"] == 5  # 2 calls per step
    nfe_table = _table(sweep_dir / "nfe_table.csv")
    assert {"dpm_solver_pp2_quadratic", "heun_trailing", "eta0_uniform", "sigma_hat_uniform_clip"} <= set(
        nfe_table
    )
    assert float(nfe_table["heun_trailing"]["NFE=5"]) == pytest.approx(solver_jobs["heun"]["fid"], rel=1e-5)
    assert (sweep_dir / "fid_vs_nfe.png").is_file()
    assert list(_table(sweep_dir / "table1.csv")) == ["eta = 0.0", "eta = 1.0", "sigma_hat"]  # DDIM rows only

    # Same seed, same samples: the single-job grid gives the same numbers as the multirun.
    out = tmp_path / "grid"
    grid = evaluate(
        eval_cfg(
            [
                *eval_overrides(tiny_ckpt, out, cache=tmp_path / "cache"),
                tiny_extractor_override,
                "n_samples=6",
                "shard_size=3",
                "batch_size=3",
                "task=sweep",
                "sweep.etas=[0,1]",
                "sweep.steps=[2,3]",
                "sweep.sigma_hat=false",
            ]
        )
    )
    by_point = {(p["eta"], p["steps"]): p["fid"] for p in grid["points"]}
    for job in jobs:
        assert by_point[(job["eta"], job["steps"])] == pytest.approx(job["fid"], rel=1e-9)


def test_nfe_table_has_a_row_per_sampler_setting(tmp_path):
    records = [
        {
            "sampler": "ddim",
            "sampler_label": "eta0_quadratic",
            "eta": 0.0,
            "steps": 10,
            "nfe": 10,
            "fid": 9.0,
        },
        {"sampler": "heun", "sampler_label": "heun_karras", "eta": 0.0, "steps": 5, "nfe": 9, "fid": 7.0},
        {
            "sampler": "unipc",
            "sampler_label": "unipc2_logsnr",
            "eta": 0.0,
            "steps": 10,
            "nfe": 10,
            "fid": 4.0,
        },
    ]
    rows, cols, cells = nfe_pivot(records)
    assert rows == ["eta0_quadratic", "heun_karras", "unipc2_logsnr"] and cols == [9, 10]
    paths = write_nfe_table(records, tmp_path)
    assert "| heun_karras | 7.00 | - |" in paths["nfe_table.md"].read_text()
    assert list(pivot([r for r in records if is_ddim(r)])[0]) == ["eta = 0.0"]
    assert list(write_table1(records, tmp_path / "t1")["table1.md"].read_text().splitlines())[2].startswith(
        "| eta = 0.0 | 9.00 |"
    )


def test_table_marks_nfe_when_quadratic_steps_repeat(tmp_path):
    records = [
        {"eta": 0.0, "variance": "eta", "steps": 50, "nfe": 50, "fid": 5.0, "n_samples": 10},
        {"eta": 0.0, "variance": "eta", "steps": 10, "nfe": 10, "fid": 9.0, "n_samples": 10},
        {"eta": 1.0, "variance": "sigma_hat", "steps": 10, "nfe": 10, "fid": 300.0, "n_samples": 10},
    ]
    rows, cols, cells = pivot(records)
    assert rows == ["eta = 0.0", "sigma_hat"] and cols == [10, 50] and cells[("sigma_hat", 10)] == 300.0
    paths = write_table1(records, tmp_path, paper="cifar10")
    md = paths["table1.md"].read_text()
    assert "| sigma_hat | 300.00 | - |" in md
    assert "13.36" in md  # the paper's CIFAR10 row for comparison


def test_submitit_launcher_config_composes(compose_config):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    from omegaconf import OmegaConf

    def launcher(*overrides):
        cfg = compose_config(
            ["ckpt=x", "hydra/launcher=submitit_slurm", *overrides],
            config_name="eval",
            return_hydra_config=True,
        )
        # Typed like the plugin's own schema: an 'auto' where it wants an int fails here.
        OmegaConf.merge(OmegaConf.structured(SlurmQueueConf), cfg.hydra.launcher)
        assert (
            cfg.hydra.callbacks.sweep_table._target_
            == "ddim.evaluation.reports.sweep_callback.SweepTableCallback"
        )
        return cfg.hydra.launcher

    four = launcher("trainer.devices=4", "trainer.num_nodes=2")
    assert four._target_.endswith("SlurmLauncher")
    assert (four.tasks_per_node, four.gpus_per_node, four.nodes) == (4, 4, 2)
    default = launcher()  # trainer.devices=auto: one task and GPU per node, not the string 'auto'
    assert (default.tasks_per_node, default.gpus_per_node, default.nodes) == (1, 1, 1)
    assert launcher("trainer.devices=[0,1,2]").tasks_per_node == 3


def test_fid_plot_labels_its_log_axes_with_plain_numbers(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from ddim.evaluation.reports.tables import plot_fid_vs_steps

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to read its labels
    cells = {("eta0", 10): 600.0, ("eta0", 20): 60.0, ("eta0", 50): 6.0}
    plot_fid_vs_steps(tmp_path / "fid.png", ["eta0"], [10, 20, 50], cells)
    ax = figures[0].axes[0]
    figures[0].canvas.draw()
    x_labels = [t.get_text() for t in ax.xaxis.get_ticklabels(which="both") if t.get_text()]
    y_labels = [t.get_text() for t in ax.yaxis.get_ticklabels(which="both") if t.get_text()]
    assert x_labels == ["10", "20", "50"]
    assert {"10", "100", "20", "50"} <= set(y_labels) and all(
        label.replace(".", "").isdigit() for label in y_labels
    )
    monkeypatch.undo()
    plt.close(figures[0])
