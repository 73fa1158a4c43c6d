"""Evaluate a checkpoint: `python src/eval.py ckpt=PATH sampler.eta=0 sampler.steps=100` (see README)."""

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ddim.evaluation import evaluate
from ddim.evaluation.settings import check_before_run
from ddim.hydra_utils import check_command_line, run_reporting_user_errors

CONF = Path(__file__).resolve().parent.parent / "conf"
log = logging.getLogger("eval")


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> dict:
    return run_reporting_user_errors(evaluate, cfg, log)


if __name__ == "__main__":
    # Every setting of every job is checked before Hydra creates a folder: a mistake is one line, exit 2.
    check_command_line(CONF, "eval", check_before_run)
    main()
