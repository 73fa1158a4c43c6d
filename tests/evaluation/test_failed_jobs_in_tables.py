"""A failed job of a sampler sweep keeps its cell in the quality-per-NFE table, shown as '-' (as in Table 1)."""

from __future__ import annotations

import csv

from ddim.evaluation.reports.sweep_callback import _failure_record
from ddim.evaluation.reports.tables import nfe_pivot, write_nfe_table


def test_a_failed_solver_job_shows_as_a_dash_in_the_nfe_table(tmp_path, compose_config):
    ok = [
        {
            "sampler": "heun",
            "sampler_label": "heun_trailing",
            "steps": 3,
            "nfe": 5,
            "fid": 7.0,
            "n_samples": 6,
        },
        {
            "sampler": "dpm_solver_pp",
            "sampler_label": "dpm_solver_pp2_logsnr",
            "steps": 3,
            "nfe": 3,
            "fid": 9.0,
        },
    ]
    # Heun with S=500 on a T=100 model fails; its settings still say where its cell is: 2*500-1 calls.
    config = compose_config(["ckpt=x", "sampler=heun", "sampler.steps=500"], config_name="eval")
    failed = _failure_record(config, ValueError("sampler.steps must be an integer in [1, 100], got 500."))
    assert (
        failed["status"] == "failed" and failed["sampler_label"] == "heun_trailing" and failed["nfe"] == 999
    )

    rows, cols, cells = nfe_pivot([*ok, failed])
    assert rows == ["heun_trailing", "dpm_solver_pp2_logsnr"] and cols == [3, 5, 999]
    assert ("heun_trailing", 999) not in cells
    paths = write_nfe_table([*ok, failed], tmp_path)
    assert "| heun_trailing | - | 7.00 | - |" in paths["nfe_table.md"].read_text()
    with open(paths["nfe_table.csv"], newline="") as f:
        table = {r["row"]: r for r in csv.DictReader(f)}
    assert table["heun_trailing"]["NFE=999"] == "" and table["heun_trailing"]["NFE=5"] == "7"


def test_a_failed_job_whose_settings_make_no_cell_leaves_the_table_intact(tmp_path, compose_config):
    # steps=abc: no NFE to place it at; the others' table is still written and the job's log says why.
    config = compose_config(["ckpt=x", "sampler=unipc", "sampler.steps=abc"], config_name="eval")
    failed = _failure_record(config, ValueError("bad steps"))
    assert failed["status"] == "failed" and "nfe" not in failed
    ok = {"sampler": "unipc", "sampler_label": "unipc2_logsnr", "steps": 3, "nfe": 3, "fid": 4.0}
    assert nfe_pivot([ok, failed])[0] == ["unipc2_logsnr"]
    assert "| unipc2_logsnr | 4.00 |" in write_nfe_table([ok, failed], tmp_path)["nfe_table.md"].read_text()
