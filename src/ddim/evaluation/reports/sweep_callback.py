"""Hydra glue of a multirun sweep: after every job and at the end, the jobs' metrics.json (and failed.json) in
the sweep directory become the tables and plot of `tables`, also logged to wandb when that logger is configured.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ddim.diffusion.schedule import Schedule
from ddim.evaluation.reports.tables import is_ddim, paper_key, write_nfe_table, write_table1
from ddim.io import write_json
from ddim.samplers import Sampler
from ddim.samplers.base import sampler_from_settings

log = logging.getLogger(__name__)

FAILED = "failed.json"


def collect_records(root: str | Path) -> list[dict[str, Any]]:
    """metrics.json (or failed.json) of every job below root (a multirun directory), sorted by job folder."""
    records = []
    paths = [*Path(root).glob(f"**/{FAILED}"), *Path(root).glob("**/metrics.json")]
    for path in sorted(paths, key=lambda p: (p.parent, p.name)):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as err:
            log.warning(f"Skipping unreadable {path}: {err}")
    return records


def _failure_record(config: DictConfig, error: BaseException) -> dict[str, Any]:
    """What a failed job was meant to measure (its table cell) and why it failed."""
    record: dict[str, Any] = {"status": "failed", "error": str(error).strip().splitlines()[0][:500]}
    values = OmegaConf.to_container(config.get("sampler") or {}, resolve=True)
    try:
        settings = sampler_from_settings(values)
    except Exception:  # noqa: BLE001 - settings that make no cell (e.g. steps=abc): the job's log says why
        return record
    record["sampler"] = settings.name  # a failed solver job is no Table 1 cell
    if settings.name == "ddim":
        record.update(eta=settings.eta, steps=settings.steps, variance=settings.variance)
    record.update(_nfe_cell(settings))
    return record


def _nfe_cell(settings: Sampler) -> dict[str, Any]:
    """The failed job's row and column of the quality-per-NFE table: its settings' label and the network
    calls they would make (counted on a linear schedule with a T large enough for its steps: a failed job
    may ask for more than T)."""
    try:
        T = max(1000, settings.steps, *(t + 1 for t in settings.timesteps or ()))
        return {"sampler_label": settings.label(), "nfe": settings.nfe(Schedule.from_config("linear", T))}
    except Exception:  # noqa: BLE001 - settings that make no cell: the job's log says why
        return {}


class SweepTableCallback(Callback):
    """Table 1 + plot in the sweep directory from the jobs' metrics.json, rebuilt after every job and at the
    end, so a failing job (recorded in its folder's failed.json, shown as '-') never costs the others' table.

    Rerunning a sweep into the same hydra.sweep.dir (e.g. the sigma_hat row as a second multirun) adds its
    jobs' folders (named by their overrides) and rebuilds the table from all jobs there.
    """

    def __init__(self, value: str = "fid") -> None:
        self.value = value
        self.failed: list[str] = []  # this multirun's failed jobs (jobs run in this process)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus
        from hydra.types import RunMode

        if config.hydra.mode != RunMode.MULTIRUN:
            return
        failed = Path(config.hydra.runtime.output_dir) / FAILED
        value = job_return._return_value  # the exception, or what the job returned
        if job_return.status == JobStatus.FAILED or (isinstance(value, dict) and "failed" in value):
            error = value if isinstance(value, BaseException) else RuntimeError(value["failed"])
            write_json(failed, _failure_record(config, error))
            self.failed.append(failed.parent.name)
        elif failed.exists():
            failed.unlink()  # the job succeeded this time
        self.write(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        paths = self.write(config)
        if paths:
            log.info(f"Sweep table and plot: {', '.join(str(p) for p in paths.values())}")
            _log_sweep_to_wandb(config, paths)
        if self.failed:
            log.error(
                f"{len(self.failed)} job(s) failed ({', '.join(self.failed)}; each folder's {FAILED} says why); "
                "the table shows them as '-'. Fix and rerun into the same hydra.sweep.dir."
            )
            raise SystemExit(1)

    def write(self, config: DictConfig) -> dict[str, Path] | None:
        sweep_dir = Path(config.hydra.sweep.dir)
        records = collect_records(sweep_dir)
        if not any(r.get(self.value) is not None for r in records):
            log.info(f"No job under {sweep_dir} reported {self.value!r}; no sweep table.")
            return None
        data = config.get("data")
        paths = {}
        if any(not is_ddim(r) and r.get(self.value) is not None for r in records):
            paths.update(write_nfe_table(records, sweep_dir, self.value))
        if any(is_ddim(r) and r.get(self.value) is not None for r in records):
            paper = paper_key(data.get("_target_") if data else None)
            paths.update(write_table1(records, sweep_dir, self.value, paper))
        return paths


def _log_sweep_to_wandb(config: DictConfig, paths: dict[str, Path]) -> None:
    """One extra wandb run holding the sweep table and plot, when the wandb logger is configured."""
    logger_cfg = config.get("logger") or {}
    if "wandb" not in logger_cfg:
        return
    from ddim.evaluation.reports.results import log_table_files

    try:
        from omegaconf import OmegaConf

        # Unresolved: the job-time interpolations (run directory) do not exist at the end of a multirun.
        raw = OmegaConf.to_container(logger_cfg["wandb"], resolve=False)
        wandb_cfg = {k: v for k, v in raw.items() if not (isinstance(v, str) and "${" in v)}
        log_table_files(wandb_cfg, paths, name=f"{config.get('task_name', 'eval')}-sweep-table")
    except Exception as err:  # noqa: BLE001 - logging must never lose the written table
        log.warning(f"Could not log the sweep table to wandb: {err}")
