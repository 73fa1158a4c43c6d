"""Evaluate a checkpoint: `python src/eval.py ckpt=PATH sampler.eta=0 sampler.steps=100` (see README)."""

import logging

import hydra
from omegaconf import DictConfig

from ddim.evaluation import evaluate
from ddim.hydra_utils import run_reporting_user_errors

log = logging.getLogger("eval")


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> dict:
    return run_reporting_user_errors(evaluate, cfg, log)


if __name__ == "__main__":
    main()
