"""evaluate(cfg): everything `python src/eval.py` does: build the context, run the configured task with its
own options, then write metrics.json (last, by rank 0, only when everything succeeded) and the loggers."""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ddim.errors import DDIMError
from ddim.evaluation.context import load_context
from ddim.evaluation.reports.results import TaskResult, report
from ddim.evaluation.tasks import get_task
from ddim.hydra_utils import instantiate_group
from ddim.io import write_json

log = logging.getLogger(__name__)


def task_options(cfg: DictConfig, name: str, task: Any) -> dict[str, Any]:
    """The task's own config node (`<name>:`) as keyword arguments, checked against run()'s signature."""
    params = [p.name for p in inspect.signature(task).parameters.values() if p.kind is p.KEYWORD_ONLY]
    if not params:
        return {}
    node = cfg.get(name)
    options = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    unknown = sorted(set(options) - set(params))
    missing = sorted(set(params) - set(options))
    if unknown or missing:
        what = f"unknown {', '.join(f'{name}.{k}' for k in unknown)}" if unknown else ""
        what += ("; " if unknown and missing else "") + (
            f"missing {', '.join(f'{name}.{k}' for k in missing)}" if missing else ""
        )
        raise DDIMError(f"task={name}: {what}; its options are {', '.join(f'{name}.{p}' for p in params)}.")
    return options


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
    name = str(cfg.get("task_type", "fid"))
    task = get_task(name)
    options = task_options(cfg, name, task)
    start = time.perf_counter()
    ctx = load_context(cfg)
    result = task(ctx, **options)
    if result is None:
        return {}
    record = finish(cfg, ctx.output_dir, result)
    log.info(f"{name} finished in {time.perf_counter() - start:.1f} s")
    return record
