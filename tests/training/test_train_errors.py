"""Bad training input a user can type: one line that names the key and the fix, and nothing written.

In-process through train(cfg), the function the entry point calls; two cases also through `src/train.py`,
where the settings are checked before Hydra creates the run directory.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddim.errors import user_error_in
from ddim.training.train import train

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["experiment=quickstart", "logger=none", "trainer.max_steps=2", "data.limit=8", "data.batch_size=4"]


def _image_folder(root: Path) -> list[str]:
    """Three good 12x12 RGB images and one file with an image name but no image inside."""
    root.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((12, 12, 3), 40 * i, dtype=np.uint8)).save(root / f"good{i}.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    return [
        "data=image_folder",
        f"data.root={root}",
        "data.num_workers=0",
        "model.net.in_channels=3",
        "model.net.out_channels=3",
    ]


CASES = {
    # name: (overrides, words the message must contain)
    "negative learning rate": (
        ["model.optim.lr=-1"],
        ["model.optim.lr=-1 is invalid: it must be a number > 0"],
    ),
    "max_steps not a number": (["trainer.max_steps=abc"], ["trainer.max_steps=abc is invalid", "integer"]),
    "fractional max_steps": (["trainer.max_steps=1.5"], ["trainer.max_steps=1.5", "integer"]),
    "ema_decay of 1 or more": (["model.ema_decay=1.5"], ["model.ema_decay=1.5", "[0, 1)"]),
    "negative warm-up": (["model.optim.warmup_steps=-5"], ["model.optim.warmup_steps=-5"]),
    "zero accumulation": (["trainer.accumulate_grad_batches=0"], ["trainer.accumulate_grad_batches=0"]),
    "validation interval not a number": (["trainer.val_check_interval=abc"], ["trainer.val_check_interval"]),
    "seed not a number": (["seed=abc"], ["seed=abc is invalid: it must be an integer >= 0 or null"]),
    "quickstart model with cifar10 data": (
        ["data=cifar10"],
        ["data.image_size is not a setting of data", "its settings are: root, download, batch_size"],
    ),
    "run directory under a regular file": (["RUN_UNDER_FILE"], ["is a file, not a folder", "hydra.run.dir="]),
    "corrupt image in an image folder": (["IMAGE_FOLDER"], ["broken.png", "cannot be read as images"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_training_input_gives_one_line_naming_the_key_and_writes_nothing(tmp_path, train_cfg, case):
    overrides, words = CASES[case]
    run_dir = tmp_path / "run"
    if overrides == ["RUN_UNDER_FILE"]:
        (tmp_path / "a_file").write_text("not a folder")
        overrides, run_dir = [], tmp_path / "a_file" / "run"
    if overrides == ["IMAGE_FOLDER"]:
        overrides = _image_folder(tmp_path / "images")
    with pytest.raises(Exception) as info:
        train(train_cfg([*QUICK, *overrides], run_dir))
    user_error = user_error_in(info.value)
    assert user_error is not None, f"not a user error: {info.value!r}"
    message = str(user_error)
    assert "\n" not in message
    for word in words:
        assert word in message
    # Nothing written: checked settings stop before the run directory exists; a bad image before any output.
    written = [
        p for p in tmp_path.rglob("*") if p.is_file() and "images" not in p.parts and p.name != "a_file"
    ]
    assert written == []


@pytest.mark.slow
def test_bad_input_on_the_command_line_leaves_no_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "src" / "train.py"),
            *QUICK,
            f"hydra.run.dir={run_dir}",
            "model.optim.lr=-1",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "model.optim.lr=-1" in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert list(tmp_path.iterdir()) == []  # not even Hydra's .hydra/ and train.log
