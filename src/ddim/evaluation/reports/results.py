"""Results on disk (metrics.json, always) and in experiment loggers (csv, wandb) when configured."""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def write_figure(fig: Any, path: Path) -> Path:
    """A finished matplotlib figure as a PNG written atomically, then closed (pyplot keeps open figures)."""
    import matplotlib.pyplot as plt

    from ddim.io import atomic_write

    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class TaskResult:
    """What a task measured (metrics.json) and what it made for the loggers (figures, CSV tables)."""

    record: dict[str, Any]
    images: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, Path] = field(default_factory=dict)
    numbers: dict[str, float] = field(default_factory=dict)  # extra scalars for the loggers only


def _numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def report(
    loggers: list[Any],
    metrics: Mapping[str, Any],
    images: Mapping[str, Path] | None = None,
    tables: Mapping[str, Path] | None = None,
    hparams: Mapping[str, Any] | None = None,
) -> None:
    """Send numbers, images (PNG paths) and CSV tables to every logger; wandb gets images and tables too."""
    for logger in loggers:
        try:
            if hparams:
                logger.log_hyperparams(dict(hparams))
            numbers = _numeric(metrics)
            if numbers:
                logger.log_metrics(numbers, step=0)
            if hasattr(logger, "log_image"):
                for key, path in (images or {}).items():
                    logger.log_image(key=key, images=[str(path)])
            if hasattr(logger, "log_table"):
                for key, path in (tables or {}).items():
                    columns, data = _csv_rows(Path(path))
                    logger.log_table(key=key, columns=columns, data=data)
            logger.save()
            logger.finalize("success")
            if type(logger).__name__ == "WandbLogger":
                # Close the run: otherwise the next job of a multirun (same process) logs into this one.
                logger.experiment.finish()
        except Exception as err:  # noqa: BLE001 - results are on disk already; a logger must not lose them
            log.warning(f"Logger {type(logger).__name__} failed: {err}")


def log_table_files(wandb_cfg: dict[str, Any], paths: Mapping[str, Path], name: str) -> None:
    """A separate wandb run for a multirun's table and plot (the jobs' own runs are closed by then)."""
    from pytorch_lightning.loggers import WandbLogger

    out_dir = Path(next(iter(paths.values()))).parent
    kwargs = {k: v for k, v in wandb_cfg.items() if k != "_target_"}
    kwargs.update(save_dir=str(out_dir), name=name)
    logger = WandbLogger(**kwargs)
    images = {k: v for k, v in paths.items() if str(v).endswith(".png")}
    tables = {k: v for k, v in paths.items() if str(v).endswith(".csv")}
    report([logger], {}, images=images, tables=tables)
