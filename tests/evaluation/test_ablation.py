"""The DDPM Table 2 ablation as a training multirun: one job per row of the paper's table, every row checked
before any of them trains."""

from pathlib import Path

import pytest

from ddim.hydra_utils import check_command_line, jobs
from ddim.training.checks import check_before_run

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_the_ablation_experiment_runs_the_rows_of_ddpm_table_2(capsys):
    import hydra

    check_command_line(CONF, "train", check_before_run, ["-m", "experiment=ablation"])  # every row is valid
    assert capsys.readouterr().err == ""
    with hydra.initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        rows = [job[0] for job in jobs("train", ["experiment=ablation"], multirun=True)]
    assert rows == [
        f"+table2_row={row}"
        for row in (
            "eps_simple",
            "eps_vlb_fixed",
            "eps_vlb_learned",
            "mu_vlb_fixed",
            "mu_vlb_learned",
            "mu_mse",
        )
    ]


def test_a_row_that_cannot_train_stops_the_multirun_before_any_job(capsys):
    # A learned variance gets no gradient from loss=simple: refused with the job named, before anything runs.
    args = ["-m", "experiment=ablation", "+table2_row=eps_simple,mu_vlb_fixed", "model.variance=learned"]
    with pytest.raises(SystemExit) as exit_info:
        check_command_line(CONF, "train", check_before_run, args)
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("Error (multirun job ") and "+table2_row=eps_simple" in lines[0]
    assert "gives no gradient to the learned variance (model.variance=learned)" in lines[0]
