"""evaluate(cfg): everything `python src/eval.py` does: build the context, run the configured task with its
own options, then write metrics.json (last, by rank 0, only when everything succeeded) and the loggers."""

from __future__ import annotations

import logging
import time
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ddim.evaluation.context import load_context
from ddim.evaluation.reports.results import TaskResult, report
from ddim.evaluation.settings import check_eval_config
from ddim.evaluation.tasks import get_task
from ddim.hydra_utils import instantiate_group
from ddim.io import write_json

log = logging.getLogger(__name__)


def finish(cfg: DictConfig, output_dir: Any, result: TaskResult) -> dict[str, Any]:
    """metrics.json (always, written last) and the configured loggers (csv / wandb)."""
    write_json(output_dir / "metrics.json", result.record)
    loggers = instantiate_group(cfg.get("logger"))
    if loggers:
        hparams = OmegaConf.to_container(cfg, resolve=True)
        report(
            loggers,
            {**result.record, **result.numbers},
            images=result.images,
            tables=result.tables,
            hparams=hparams,  # type: ignore[arg-type]
        )
    log.info(f"Results: {output_dir / 'metrics.json'}")
    return result.record


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the configured task (cfg.task_type) and return what it measured (empty on non-zero ranks)."""
    checked = check_eval_config(cfg)
    name = checked.settings.task_type
    start = time.perf_counter()
    ctx = load_context(cfg, checked)
    result = get_task(name)(ctx, **checked.task_options)
    if result is None:
        return {}
    record = finish(cfg, ctx.output_dir, result)
    log.info(f"{name} finished in {time.perf_counter() - start:.1f} s")
    return record
