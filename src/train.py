"""Train a DDPM epsilon-model: `python src/train.py experiment=cifar10` (see README for options)."""

import logging

from ddim.cpu_threads import use_passive_waiting

use_passive_waiting()  # before torch loads: OpenMP reads its settings once

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from ddim.hydra_utils import run_reporting_user_errors  # noqa: E402
from ddim.training.train import train  # noqa: E402

log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> dict:
    return run_reporting_user_errors(train, cfg, log)  # in a multirun, {"failed": ...} marks a failed job


if __name__ == "__main__":
    main()
