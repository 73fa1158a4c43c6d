"""The ablation grid as a training multirun: a row that cannot train is logged and the other rows still run."""


def test_a_row_that_cannot_train_does_not_stop_the_other_rows(tmp_path, hydra_main):
    # Both rows are refused at start-up (a learned variance gets no gradient from loss=simple): the second one
    # only logs its message if the first one's refusal did not end the multirun. `src/train.py -m` in-process.
    code, output = hydra_main(
        "train.py",
        ["-m", "experiment=ablation", "loss=simple", "model.variance=learned,learned_range", "logger=none",
         f"hydra.sweep.dir={tmp_path}"],
    )  # fmt: skip
    assert code == 1, output[-2000:]  # every job ran; the multirun's exit code reports that some failed
    logs = [(tmp_path / str(i) / "train.log").read_text() for i in (0, 1)]
    for log, variance in zip(logs, ("learned", "learned_range"), strict=True):
        assert f"gives no gradient to the learned variance (model.variance={variance})" in log
