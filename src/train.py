"""Train a DDPM epsilon-model: `python src/train.py experiment=cifar10` (see README for options)."""

import logging
from pathlib import Path

from ddim.cpu_threads import use_passive_waiting

use_passive_waiting()  # before torch loads: OpenMP reads its settings once

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from ddim.hydra_utils import check_command_line, run_reporting_user_errors  # noqa: E402
from ddim.training.checks import check_before_run  # noqa: E402
from ddim.training.train import train  # noqa: E402

CONF = Path(__file__).resolve().parent.parent / "conf"
log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> dict:
    return run_reporting_user_errors(train, cfg, log)  # in a multirun, {"failed": ...} marks a failed job


if __name__ == "__main__":
    # Every setting of every job is checked before Hydra creates a folder: a mistake is one line, exit 2.
    check_command_line(CONF, "train", check_before_run)
    main()
