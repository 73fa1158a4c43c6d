"""Evaluate a checkpoint: `python src/eval.py ckpt=PATH sampler.eta=0 sampler.steps=100` (see README)."""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ddim.errors import user_error_in
from ddim.evaluation import evaluate

log = logging.getLogger("eval")


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> dict:
    try:
        return evaluate(cfg)
    except Exception as exc:
        user_error = user_error_in(exc)
        if user_error is None:
            raise
        log.error(str(user_error))
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # The other jobs go on; the sweep table shows this one as '-' and the multirun exits non-zero.
            return {"failed": str(user_error)}
        sys.exit(2)


if __name__ == "__main__":
    main()
