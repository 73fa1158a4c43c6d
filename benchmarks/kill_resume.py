"""Kill -9 the quickstart at random moments, resume it with the README's command, compare with an unkilled run.

    python benchmarks/kill_resume.py --trials 5                      # kills at random moments
    TMPDIR=/dev/shm python benchmarks/kill_resume.py --during-save    # kills while a checkpoint is written

Each trial runs `python src/train.py experiment=quickstart ... hydra.run.dir=<run>`, kills it (SIGKILL, the
whole process group) up to --kills times, each time resuming with `... hydra.run.dir=<run> ckpt_path=last`
(or starting over when no checkpoint was written yet), and lets the last attempt finish. It reports whether
last.ckpt was intact after every kill, whether temporaries were left and cleaned, and whether the final
weights, EMA and optimizer state equal the unkilled run's bit for bit. --during-save waits for a checkpoint's
temporary file to appear and kills then, the moment a non-atomic writer truncates last.ckpt.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ddim.checkpoints.lightning_io import is_intact  # noqa: E402
from ddim.io import TEMP_SUFFIX  # noqa: E402

# A short quickstart: 60 steps, a checkpoint every 10, validation and sample grids in between.
ARGS = [
    "experiment=quickstart",
    "trainer.max_steps=60",
    "trainer.val_check_interval=15",
    "trainer.log_every_n_steps=5",
    "data.limit=320",
    "model.net.dropout=0.1",
    "callbacks.model_checkpoint.every_n_train_steps=10",
    "callbacks.model_checkpoint.save_top_k=-1",
    "callbacks.sample_grid.every_n_steps=20",
    "callbacks.sample_grid.n_samples=4",
    "callbacks.sample_grid.sampler.steps=5",
]


def start(run_dir: Path, resume: bool) -> subprocess.Popen:
    extra = ["ckpt_path=last"] if resume else []
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HYDRA_FULL_ERROR": "1"}
    log = open(run_dir.with_suffix(".log"), "ab")  # a pipe nobody reads would fill up and stall the run
    return subprocess.Popen(
        [sys.executable, str(ROOT / "src" / "train.py"), *ARGS, f"hydra.run.dir={run_dir}", *extra],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=run_dir.parent,
        start_new_session=True,  # its own process group, killed as a whole
    )


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def temporaries(run_dir: Path) -> list[Path]:
    return (
        list((run_dir / "checkpoints").glob(f"*{TEMP_SUFFIX}")) if (run_dir / "checkpoints").is_dir() else []
    )


def wait_for_save(proc: subprocess.Popen, run_dir: Path, nth: int, timeout: float) -> bool:
    """Poll until the nth checkpoint temporary of this process appears (that save is under way); False if the
    run ended first."""
    seen: set[str] = set()
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        seen.update(p.name for p in temporaries(run_dir))
        if len(seen) >= nth:
            return True
        time.sleep(0.0005)
    return False


def finish(proc: subprocess.Popen, run_dir: Path) -> None:
    if proc.wait() != 0:
        raise SystemExit(f"training failed:\n{run_dir.with_suffix('.log').read_text()[-3000:]}")


def final_state(run_dir: Path) -> dict:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return {
        "global_step": ckpt["global_step"],
        "state_dict": ckpt["state_dict"],
        "opt": ckpt["optimizer_states"],
    }


def equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def max_abs_diff(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--kills", type=int, default=2, help="kills per trial before the run may finish")
    parser.add_argument("--during-save", action="store_true", help="kill while a checkpoint is being written")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a fresh folder under ./outputs")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kill_resume_", dir=ROOT / "outputs"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"TMPDIR={os.environ.get('TMPDIR', '(unset)')}; runs in {workdir}; OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', '(unset)')}"
    )

    reference = workdir / "uninterrupted"
    began = time.monotonic()
    finish(start(reference, resume=False), reference)
    duration = time.monotonic() - began
    expected = final_state(reference)
    print(f"uninterrupted run: {duration:.1f} s, step {expected['global_step']}")

    results = []
    for trial in range(args.trials):
        run_dir = workdir / f"trial{trial}"
        notes = []
        for _ in range(args.kills):
            resume = (run_dir / "checkpoints" / "last.ckpt").exists()
            proc = start(run_dir, resume=resume)
            if args.during_save:
                if not wait_for_save(proc, run_dir, rng.randint(1, 8), timeout=3 * duration):
                    finish(proc, run_dir)
                    notes.append("finished before a save")
                    break
            else:
                time.sleep(rng.uniform(0.0, duration))
                if proc.poll() is not None:
                    finish(proc, run_dir)
                    notes.append("finished before the kill")
                    break
            kill(proc)
            last = run_dir / "checkpoints" / "last.ckpt"
            state = "no last.ckpt yet" if not last.exists() else ("intact" if is_intact(last) else "DAMAGED")
            notes.append(f"killed ({state}, {len(temporaries(run_dir))} temporaries left)")
        else:
            proc = start(run_dir, resume=(run_dir / "checkpoints" / "last.ckpt").exists())
            finish(proc, run_dir)
        left = temporaries(run_dir)
        got = final_state(run_dir)
        same = equal(got, expected)
        diff = max_abs_diff(got["state_dict"], expected["state_dict"])
        results.append(same)
        print(
            f"trial {trial}: {'; '.join(notes)}; temporaries after resume: {len(left)}; "
            f"bitwise equal: {same} (max abs weight diff {diff:.3g})"
        )
    print(f"{sum(results)} of {len(results)} resumed runs bitwise equal to the uninterrupted run")
    if args.workdir is None:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
