"""CPU thread settings that degrade gracefully on a shared machine (a laptop, a login or CPU node).

OpenMP threads that find no work spin before they sleep; next to another busy process a spinning or
preempted thread holds up every parallel region, and the quickstart ran ~30x slower beside one busy
process. Waiting passively costs little when the machine is free. This module imports no torch: OpenMP
reads its variables once, when torch loads, so `use_passive_waiting` must run before that.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

# Any of these means the user chose the OpenMP behaviour; we then change nothing.
USER_SETTINGS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def use_passive_waiting(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Set OMP_WAIT_POLICY=PASSIVE unless the user set any OpenMP variable; True if it was set here."""
    if any(name in environ for name in USER_SETTINGS):
        return False
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def set_cpu_threads(threads: int | None) -> None:
    """torch.set_num_threads(threads) unless the user set OMP_NUM_THREADS (theirs wins) or threads is None."""
    if threads is not None and "OMP_NUM_THREADS" not in os.environ:
        import torch

        torch.set_num_threads(int(threads))


def describe_threads() -> str:
    """One line for the start of a run: the thread settings in force and how to change them."""
    import torch

    chosen = {name: os.environ[name] for name in USER_SETTINGS if name in os.environ}
    settings = ", ".join(f"{k}={v}" for k, v in chosen.items()) or "OpenMP defaults"
    return (
        f"CPU threads: {torch.get_num_threads()} ({settings}); change with cpu_threads=N or OMP_NUM_THREADS=N "
        "(fewer on a busy or shared CPU); OMP_WAIT_POLICY=ACTIVE may help on a machine of your own."
    )
