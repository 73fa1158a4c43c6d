"""Train a DDPM epsilon-model: `python src/train.py experiment=cifar10` (see README for options)."""

import logging
import sys

import hydra
from omegaconf import DictConfig

from ddim.errors import user_error_in
from ddim.training import train

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
        sys.exit(2)


if __name__ == "__main__":
    main()
