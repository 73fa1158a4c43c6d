"""Train a DDPM epsilon-model: `python src/train.py experiment=cifar10` (see README for options)."""

import logging
import sys

from ddim.cpu_threads import use_passive_waiting

use_passive_waiting()  # before torch loads: OpenMP reads its settings once

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from ddim.errors import user_error_in  # noqa: E402
from ddim.training import train  # noqa: E402

log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except Exception as exc:
        user_error = user_error_in(exc)
        if user_error is None:
            raise
        log.error(str(user_error))
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return  # the other rows of a sweep (e.g. the ablation grid) still train; this one logged why
        sys.exit(2)


if __name__ == "__main__":
    main()
