"""DDPM Table 2 layout for an ablation: rows = parameterization x objective x variance, columns = FID and
NLL (bits/dim), gathered from the metrics.json of evaluation runs (task=fid and task=nll of each checkpoint).

    python -m ddim.evaluation.reports.ablation OUT_DIR RUN_DIR_OR_SWEEP_DIR...

Each checkpoint's row comes from its own hyper-parameters, so nothing has to be named by hand.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ddim.io import write_text

# DDPM Table 2 (CIFAR10), for the comparison column: (parameterization, loss, variance) -> FID
PAPER_FID = {
    ("mu", "vlb", "learned"): 23.69,
    ("mu", "vlb", "fixed_large"): 13.22,
    ("eps", "vlb", "fixed_large"): 13.51,
    ("eps", "simple", "fixed_large"): 3.17,
}
COLUMNS = [
    "parameterization",
    "loss",
    "variance",
    "sampler",
    "fid",
    "nll_bits_per_dim",
    "nll_ci95",
    "train_time_s",
    "paper_fid_cifar10",
    "checkpoint",
]


def _train_time(ckpt: Path) -> float | None:
    """Wall time of the training run that wrote the checkpoint (its run folder's metrics.json), if known."""
    run_metrics = ckpt.parent.parent / "metrics.json"
    try:
        return json.loads(run_metrics.read_text()).get("wall_time_s")
    except (OSError, ValueError):
        return None


def _sampler_settings(m: dict[str, Any]) -> str | None:
    """The sampler an FID was measured with, e.g. 'eta0_uniform, 100 steps' (None in older metrics files)."""
    label = m.get("sampler_label")
    return None if label is None else f"{label}, {m.get('steps')} steps"


def collect(metrics_files: Iterable[Path]) -> list[dict[str, Any]]:
    """One row per (checkpoint, sampler settings of its FID): a checkpoint evaluated with several samplers
    gets one row each, never one FID silently standing for the others. NLL does not depend on the sampler,
    so each of a checkpoint's rows carries its NLL."""
    from ddim.checkpoints import read_checkpoint

    models: dict[str, dict[str, Any]] = {}
    fids: dict[str, dict[str | None, float]] = {}
    for path in metrics_files:
        m = json.loads(Path(path).read_text())
        ckpt = m.get("checkpoint")
        if not ckpt or m.get("task") not in ("fid", "nll", None):
            continue
        if ckpt not in models:
            hp = read_checkpoint(ckpt).hyper_parameters or {}
            models[ckpt] = {
                "parameterization": hp.get("parameterization", "eps"),
                "loss": hp.get("loss", "simple"),
                "variance": hp.get("variance", "fixed_large"),
                "nll_bits_per_dim": None,
                "nll_ci95": None,
                "train_time_s": _train_time(Path(ckpt)),
                "checkpoint": ckpt,
            }
            fids[ckpt] = {}
        if "bits_per_dim" in m:
            models[ckpt]["nll_bits_per_dim"] = m["bits_per_dim"]
            models[ckpt]["nll_ci95"] = m.get("bits_per_dim_ci95")
        elif "fid" in m:
            fids[ckpt][_sampler_settings(m)] = m["fid"]
    rows = []
    for ckpt, model in models.items():
        paper = PAPER_FID.get((model["parameterization"], model["loss"], model["variance"]))
        for sampler, fid in sorted(fids[ckpt].items(), key=lambda kv: str(kv[0])) or [(None, None)]:
            rows.append({**model, "sampler": sampler, "fid": fid, "paper_fid_cifar10": paper})
    return sorted(
        rows, key=lambda r: (r["parameterization"] != "mu", r["loss"], r["variance"], str(r["sampler"]))
    )


def write_table(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    """table2_ablation.md and .csv in out_dir."""

    def cell(v: Any) -> str:
        return "-" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))

    md = ["| " + " | ".join(COLUMNS[:-1]) + " |", "|" + "---|" * (len(COLUMNS) - 1)]
    md += ["| " + " | ".join(cell(r[c]) for c in COLUMNS[:-1]) + " |" for r in rows]
    csv = [",".join(COLUMNS)] + [",".join("" if r[c] is None else str(r[c]) for c in COLUMNS) for r in rows]
    out_dir = Path(out_dir)
    return {
        "md": write_text(out_dir / "table2_ablation.md", "\n".join(md) + "\n"),
        "csv": write_text(out_dir / "table2_ablation.csv", "\n".join(csv) + "\n"),
    }


USAGE = "usage: python -m ddim.evaluation.reports.ablation OUT_DIR RUN_DIR_OR_SWEEP_DIR... (the evaluation runs' folders)"


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] in ("-h", "--help"):
        sys.exit(USAGE)
    out_dir, *roots = argv
    files = [p for root in roots for p in sorted(Path(root).rglob("metrics.json"))]
    if not files:
        sys.exit(f"No metrics.json under {', '.join(roots)}; {USAGE}")
    paths = write_table(collect(files), Path(out_dir))
    print(Path(paths["md"]).read_text())


if __name__ == "__main__":
    main(sys.argv[1:])
