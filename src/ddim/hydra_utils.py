"""Hydra helpers shared by training and evaluation (kept below both so neither imports the other)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from ddim.errors import DDIMError, user_error_in


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group holding name -> {_target_: ...} (callbacks, loggers)."""
    if not group:
        return []
    return [
        hydra.utils.instantiate(conf, _convert_="all")
        for conf in group.values()
        if conf and "_target_" in conf
    ]


def run_reporting_user_errors(task: Callable[[DictConfig], Any], cfg: DictConfig, log: logging.Logger) -> Any:
    """task(cfg) as an entry point runs it: a user error is one logged line and exit 2, no traceback.

    In a multirun the other jobs go on (e.g. the rest of an ablation grid or an evaluation sweep): the failed
    job returns {"failed": message} instead, which the sweep table shows as '-'. Anything else is a bug and
    keeps its traceback.
    """
    try:
        return task(cfg)
    except Exception as exc:
        user_error = user_error_in(exc)
        if user_error is None:
            raise
        log.error(str(user_error))
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return {"failed": str(user_error)}
        sys.exit(2)


class FailedJobsExitCode(Callback):
    """A multirun in which jobs failed with a user error (each returned {"failed": message}, see
    run_reporting_user_errors, and logged its line) exits 1 once every job has run, not 0."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        value = job_return.return_value if job_return.status == JobStatus.COMPLETED else None
        if isinstance(value, dict) and "failed" in value:
            self.failed.append(f"{config.hydra.job.num} ({config.hydra.job.override_dirname})")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.failed:
            logging.getLogger(__name__).error(
                f"{len(self.failed)} job(s) of the multirun failed: {', '.join(self.failed)}; each job's log "
                f"under {config.hydra.sweep.dir} says why."
            )
            raise SystemExit(1)


class CheckBeforeRun(Callback):
    """Hydra callback: `check(config, folder_key)` runs before Hydra creates the run folder (and, with
    before_multirun, the sweep folder), so a bad command line leaves nothing behind. A user error is one
    plain line and exit 2: logging is not configured yet at this point.

    check: dotted path of the check, e.g. ddim.training.checks.check_before_run; folder_key names the folder
    about to be created ("hydra.run.dir" or "hydra.sweep.dir").
    """

    def __init__(self, check: str, before_multirun: bool = False) -> None:
        self.check: Callable[[DictConfig, str], None] = hydra.utils.get_method(check)
        self.before_multirun = before_multirun

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._run(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.before_multirun:
            self._run(config, "hydra.sweep.dir")

    def _run(self, config: DictConfig, folder_key: str) -> None:
        try:
            self.check(config, folder_key)
        except DDIMError as err:
            print(f"Error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
