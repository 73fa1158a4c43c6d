"""The ablation grid as a training multirun: a row that cannot train is logged and the other rows still run."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_row_that_cannot_train_does_not_stop_the_other_rows(tmp_path):
    # Both rows are refused at start-up (a learned variance gets no gradient from loss=simple): the second one
    # only logs its message if the first one's refusal did not end the multirun.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "src" / "train.py"), "-m", "experiment=ablation", "loss=simple",
         "model.variance=learned,learned_range", "logger=none", f"hydra.sweep.dir={tmp_path}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    logs = [(tmp_path / str(i) / "train.log").read_text() for i in (0, 1)]
    for log, variance in zip(logs, ("learned", "learned_range"), strict=True):
        assert f"gives no gradient to the learned variance (model.variance={variance})" in log
