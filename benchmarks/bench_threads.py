"""Quickstart speed under CPU thread settings, alone and beside a busy process (a shared laptop or node).

    python benchmarks/bench_threads.py                       # the settings below, each alone and busy
    python benchmarks/bench_threads.py --steps 100 --repeats 2

Each setting runs `python src/train.py experiment=quickstart trainer.max_steps=N` in a fresh process with
exactly the given OpenMP variables (others removed), once on an otherwise idle machine and once next to
`python -c "while True: pass"`. Reported: steps/s of the fit (metrics.json wall time, start-up excluded),
CPU seconds the run used, and the busy/alone ratio. On a machine shared with other work the absolute
numbers move; compare the settings measured in the same invocation (they are interleaved).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# GOMP_SPINCOUNT=300000 is what libgomp does when nothing is set (spin that long, then sleep); src/train.py
# leaves OpenMP alone when the user sets it, so that row is the behaviour before train.py chose defaults.
SETTINGS = {
    "OpenMP's own default (GOMP_SPINCOUNT=300000)": {"GOMP_SPINCOUNT": "300000"},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"},
    "nothing set (src/train.py's defaults)": {},
}
OMP_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS")


def run(setting: dict, steps: int, workdir: Path) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if k not in OMP_VARS}
    env.update(setting)
    env["PYTHONPATH"] = str(ROOT / "src")
    run_dir = Path(tempfile.mkdtemp(dir=workdir))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "src" / "train.py"),
            "experiment=quickstart",
            f"trainer.max_steps={steps}",
            "trainer.val_check_interval=100000",
            f"callbacks.model_checkpoint.every_n_train_steps={steps}",
            "~callbacks.sample_grid",
            "logger=none",
            f"hydra.run.dir={run_dir}",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    wall = json.loads((run_dir / "metrics.json").read_text())["wall_time_s"]
    return steps / wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; quickstart, {args.steps} steps per run")
    results: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for busy in (False, True):
                hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
                try:
                    for name, setting in SETTINGS.items():
                        results.setdefault((name, busy), []).append(run(setting, args.steps, Path(tmp)))
                finally:
                    if hog is not None:
                        hog.kill()
                        hog.wait()
    print(
        f"{'setting':<52} {'alone steps/s':>13} {'busy steps/s':>13} {'busy/alone':>10} {'CPU s alone/busy':>17}"
    )
    for name in SETTINGS:
        alone, busy = results[(name, False)], results[(name, True)]
        rate_alone = max(r for r, _ in alone)
        rate_busy = max(r for r, _ in busy)
        cpu_alone = min(c for _, c in alone)
        cpu_busy = min(c for _, c in busy)
        print(
            f"{name:<52} {rate_alone:>13.2f} {rate_busy:>13.2f} {rate_busy / rate_alone:>10.2f} "
            f"{cpu_alone:>8.1f}/{cpu_busy:<8.1f}"
        )


if __name__ == "__main__":
    main()
