"""Hydra glue shared by training and evaluation (kept below both so neither imports the other): the check of
a command line before Hydra starts, the entry points' one-line user-error wrapper, config groups.

`check_command_line` composes the config(s) the command line asks for with Hydra's compose API, one per job
of a multirun, and runs the entry point's settings check on each, before Hydra creates any folder. A mistake
anywhere (a wrong type or range, an unknown key, a missing option, an unparsable override) is one line on
stderr and exit 2, with our message alone: Hydra's own wording is translated, not wrapped.
"""

from __future__ import annotations

import copy
import logging
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from ddim.command_line import explain_override_error, quote_unicode_overrides
from ddim.errors import DDIMError, user_error_in

# Hydra flags that do not run a job (or choose another config): the command line is left to Hydra.
PASS_THROUGH = ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--resolve", "--package", "-p",
                "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--shell-completion",
                "-sc", "--experimental-rerun")  # fmt: skip
MAX_CHECKED_JOBS = 256  # a larger multirun is checked on its first jobs; each job checks itself anyway

Check = Callable[[DictConfig, str], None]


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

    In a multirun the other jobs go on (e.g. the rest of an evaluation sweep): the failed job returns
    {"failed": message} instead, which the sweep table shows as '-'. Anything else is a bug and keeps its
    traceback.
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


def check_command_line(
    conf_dir: Path, config_name: str, check: Check, argv: Sequence[str] | None = None
) -> None:
    """Compose and check every job the command line asks for; on a mistake print one line and exit 2.

    check(cfg, folder_key) raises DDIMError; folder_key names the folder the run would create
    ("hydra.run.dir", or "hydra.sweep.dir" for a multirun). Overrides whose value holds non-ASCII letters
    (a unicode run folder) are quoted in sys.argv so that Hydra's parser takes them as they are.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a.split("=")[0] in PASS_THROUGH for a in args):
        return
    quoted = quote_unicode_overrides(args)
    if argv is None and quoted != args:
        sys.argv[1:] = quoted
    multirun = any(a in ("-m", "--multirun") for a in quoted)
    overrides = [a for a in quoted if not a.startswith("-")]
    hydra_config = HydraConfig.instance().cfg  # set for each job below, restored at the end
    job: list[str] = []
    try:
        with hydra.initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            for job, compose in composed_jobs(config_name, overrides, multirun):  # noqa: B007 - job: for the error below
                cfg = compose()
                HydraConfig.instance().set_config(cfg)  # so ${hydra:...} resolves, as in the run
                check(cfg, "hydra.sweep.dir" if multirun else "hydra.run.dir")
    except DDIMError as err:
        where = f" (multirun job {' '.join(job)})" if multirun and job else ""
        print(f"Error{where}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        HydraConfig.instance().cfg = hydra_config


def jobs(config_name: str, overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override list of each job: the command line's sweeps (and hydra.sweeper.params of the config)
    expanded as Hydra's basic sweeper does; one job for a single run."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
        if not multirun:
            return [overrides]
        base = [o.input_line for o in parsed if not o.is_sweep_override()]
        params = compose_job(config_name, base, multirun).hydra.sweeper.params or {}
        given = {o.get_key_element() for o in parsed}
        from_config = [f"{k}={v}" for k, v in params.items() if k not in given]
        return [job for batch in BasicSweeper.split_arguments(parser.parse_overrides(from_config) + parsed, None)
                for job in batch]  # fmt: skip
    except DDIMError:
        raise
    except Exception as err:  # noqa: BLE001 - Hydra's parser raises its own types
        raise DDIMError(explain_hydra_error(err, overrides, config_name)) from None


def composed_jobs(
    config_name: str, overrides: list[str], multirun: bool
) -> Iterator[tuple[list[str], Callable[[], DictConfig]]]:
    """(job, a function composing its config) for each job. A job that only changes values of keys the
    config has (sampler.eta=0.2, not sampler=unipc) is the base config with those values set, as Hydra's own
    override step does; the others are composed in full (a group's defaults tree is the slow part)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    all_jobs = jobs(config_name, overrides, multirun)[:MAX_CHECKED_JOBS]
    base = [o for o in overrides if all(o in job for job in all_jobs)]
    base_cfg = compose_job(config_name, base, multirun) if len(all_jobs) > 1 else None

    def composer(job: list[str]) -> Callable[[], DictConfig]:
        def compose() -> DictConfig:
            cfg = base_cfg and _with_values(
                base_cfg, parser.parse_overrides([o for o in job if o not in base])
            )
            return cfg if cfg is not None else compose_job(config_name, job, multirun)

        return compose

    for job in all_jobs:
        yield job, composer(job)


def _with_values(base: DictConfig, changes: list[Any]) -> DictConfig | None:
    """base with value changes applied, or None when a change is not a plain value of an existing key."""
    groups = set(base.hydra.runtime.choices)
    missing = object()
    for change in changes:
        key = change.key_or_group
        plain = not (change.is_add() or change.is_delete() or change.is_force_add() or change.package)
        if not plain or key in groups or key.startswith("hydra") or change.is_sweep_override():
            return None
        if OmegaConf.select(base, key, default=missing, throw_on_resolution_failure=False) is missing:
            return None
    cfg = copy.deepcopy(base)
    for change in changes:
        OmegaConf.update(cfg, change.key_or_group, change.value(), merge=True)
    return cfg


def compose_job(config_name: str, job: list[str], multirun: bool) -> DictConfig:
    """One job's config, with the hydra node as a run would see it."""
    try:
        cfg = hydra.compose(config_name, overrides=job, return_hydra_config=True)
    except Exception as err:  # noqa: BLE001 - Hydra raises several composition error types
        raise DDIMError(explain_hydra_error(err, job, config_name)) from None
    folder = cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(folder)
        cfg.hydra.job.override_dirname = ",".join(job)
        cfg.hydra.mode = RunMode.MULTIRUN if multirun else RunMode.RUN
    return cfg


def explain_hydra_error(err: BaseException, overrides: Sequence[str], config_name: str) -> str:
    """Hydra's composition and parsing errors as one line of ours that says what to do."""
    text = str(err)
    cause = str(err.__cause__ or "")
    unknown = re.search(r"Key '([^']+)' is not in struct\s+full_key: (\S+)", cause)
    if unknown:
        return unknown_override_message(unknown.group(2), overrides, config_name)
    missing = re.search(r"Could not find '([^'/]+)/([^']+)'.*?Available options in '[^']+':\n(.*?)(?:\nConfig search|$)",
                        text, re.S)  # fmt: skip
    if missing:
        group, option = missing.group(1), missing.group(2)
        options = ", ".join(line.strip() for line in missing.group(3).splitlines() if line.strip())
        return f"{group}={option} is not an option of {group}: choose one of {options}."
    missing_group = re.search(r"Could not find '([^']+)'", text)
    if missing_group:
        return f"{missing_group.group(1)} is not a config group or option here; check the spelling of the override."
    unicode = explain_override_error(text)
    if unicode is not None:
        return unicode
    if "LexerNoViableAltException" in text or "no viable alternative" in text or "mismatched input" in text:
        bad = next(
            (o for o in overrides if o.strip() and o.split("=")[-1] and o.split("=")[-1] in text), None
        )
        bad = bad or text.splitlines()[0].split(": ", 1)[-1]
        return (
            f"Cannot read the override {bad!r}: quote a value with spaces or special characters, e.g. "
            "'key=\"a value\"' (the outer single quotes keep the shell from removing the inner ones)."
        )
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return f"{first} (in the command line's overrides)"


def unknown_override_message(key: str, overrides: Sequence[str], config_name: str) -> str:
    """`a.b.c=...` where the config has no a.b.c: name the valid keys of a.b (and how the node was chosen)."""
    parent, _, name = key.rpartition(".")
    rest = [o for o in overrides if o.split("=")[0].lstrip("+~") != key]
    try:
        cfg = hydra.compose(config_name, overrides=rest, return_hydra_config=True)
        node = OmegaConf.select(cfg, parent) if parent else cfg
        valid = [k for k in node.keys() if not (str(k).startswith("_") and str(k).endswith("_"))]
        choice = cfg.hydra.runtime.choices.get(parent.split(".")[0]) if parent else None
    except Exception:  # noqa: BLE001 - the message stays useful without the list
        valid, choice = [], None
    owner = f"{parent}={choice}" if choice and "." not in parent else (parent or "the config")
    if parent == "sampler" and name == "name":
        return f"sampler.name: a sampler is chosen by its config, e.g. sampler={_value_of(key, overrides)}."
    listing = f"; its settings are: {', '.join(map(str, valid))}" if valid else ""
    return f"{key} is not a setting of {owner}{listing}."


def _value_of(key: str, overrides: Sequence[str]) -> str:
    return next((o.split("=", 1)[1] for o in overrides if o.split("=")[0].lstrip("+~") == key), "NAME")
