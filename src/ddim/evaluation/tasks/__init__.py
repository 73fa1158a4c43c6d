"""The evaluation tasks, one module each, registered by name in TASKS (`python src/eval.py task=<name>`).

A task is `run(ctx, **options) -> TaskResult | None`: `ctx` is the EvalContext (network, schedule, validated
sampler, image shape, run settings, builders for the Trainer, data and metric scorer) and the options are
the keys of the task's own config node, `<name>:` in conf/task/<name>.yaml (tasks without options take only
ctx). It returns None on ranks other than 0. metrics.json and the loggers are handled by the caller.

Adding a task: a module here with `run`, one line in TASKS, and conf/task/<name>.yaml setting
`task_type: <name>` (and its options node).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ddim.errors import DDIMError

# name -> "module:function", imported when the task is run.
TASKS: dict[str, str] = {
    "fid": "ddim.evaluation.tasks.fid:run",
    "sample": "ddim.evaluation.tasks.sample:run",
    "sweep": "ddim.evaluation.tasks.sweep:run",
    "reconstruction": "ddim.evaluation.tasks.reconstruction:run",
    "interpolation": "ddim.evaluation.tasks.interpolation:run",
    "consistency": "ddim.evaluation.tasks.consistency:run",
    "progressive": "ddim.evaluation.tasks.progressive:run",
    "ddpm_interpolation": "ddim.evaluation.tasks.ddpm_interpolation:run",
    "nll": "ddim.evaluation.tasks.nll:run",
    "rate_distortion": "ddim.evaluation.tasks.rate_distortion:run",
    "optimize_timesteps": "ddim.evaluation.tasks.optimize_timesteps:run",
}


def get_task(name: str) -> Callable:
    if name not in TASKS:
        raise DDIMError(f"Unknown task {name!r}; choose task= one of {', '.join(TASKS)}.")
    module, function = TASKS[name].split(":")
    return getattr(importlib.import_module(module), function)
