"""Result tables and plots shaped like the DDIM paper's: Table 1 (FID over eta x S) and Table 2 (MSE over S),
and the quality-per-NFE table when a sweep runs other samplers (rows: sampler settings, columns: NFE).

Sweeps end here either way: a Hydra multirun (one job per grid point; sweep_callback.SweepTableCallback
collects every job's metrics.json when the multirun finishes) or the single-job grid task (which passes its
records in).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ddim.evaluation.reports.results import write_figure
from ddim.io import atomic_write, write_text

log = logging.getLogger(__name__)

# DDIM paper, Table 1 (FID, 50k samples, training-set statistics) and Table 2 (CIFAR10 test, MSE on [0, 1]).
PAPER_TABLE1: dict[str, dict[str, dict[int, float]]] = {
    "cifar10": {
        "eta = 0.0": {10: 13.36, 20: 6.84, 50: 4.67, 100: 4.16, 1000: 4.04},
        "eta = 0.2": {10: 14.04, 20: 7.11, 50: 4.77, 100: 4.25, 1000: 4.09},
        "eta = 0.5": {10: 16.66, 20: 8.35, 50: 5.25, 100: 4.46, 1000: 4.29},
        "eta = 1.0": {10: 41.07, 20: 18.36, 50: 8.01, 100: 5.78, 1000: 4.73},
        "sigma_hat": {10: 367.43, 20: 133.37, 50: 32.72, 100: 9.99, 1000: 3.17},
    },
    "celeba64": {
        "eta = 0.0": {10: 17.33, 20: 13.73, 50: 9.17, 100: 6.53, 1000: 3.51},
        "eta = 0.2": {10: 17.66, 20: 14.11, 50: 9.51, 100: 6.79, 1000: 3.64},
        "eta = 0.5": {10: 19.86, 20: 16.06, 50: 11.01, 100: 8.09, 1000: 4.28},
        "eta = 1.0": {10: 33.12, 20: 26.03, 50: 18.48, 100: 13.93, 1000: 5.98},
        "sigma_hat": {10: 299.71, 20: 183.83, 50: 71.71, 100: 45.20, 1000: 3.26},
    },
}
PAPER_TABLE2 = {10: 0.014, 20: 0.0065, 50: 0.0023, 100: 0.0009, 200: 0.0004, 500: 0.0001, 1000: 0.0001}

TABLE1_FILES = ("table1.md", "table1.csv", "fid_vs_steps.png", "results.csv")
NFE_FILES = ("nfe_table.md", "nfe_table.csv", "fid_vs_nfe.png", "results.csv")


def is_ddim(record: dict[str, Any]) -> bool:
    """Records written before samplers had names are DDIM's."""
    return record.get("sampler", "ddim") == "ddim"


def row_label(record: dict[str, Any]) -> str:
    """'eta = 0.2' for the eta family, 'sigma_hat' for DDPM with the larger variance."""
    if record.get("variance") == "sigma_hat":
        return "sigma_hat"
    eta = float(record["eta"])
    return f"eta = {eta:.1f}" if round(eta, 1) == eta else f"eta = {eta:g}"


def _row_order(label: str) -> tuple[int, float]:
    return (1, 0.0) if label == "sigma_hat" else (0, float(label.split("=")[1]))


def pivot(records: Iterable[dict[str, Any]], value: str = "fid") -> tuple[list[str], list[int], dict]:
    """(row labels, S values, {(row, S): value}) from flat records holding eta/variance/steps/value."""
    cells: dict[tuple[str, int], float] = {}
    keys = set()
    for r in records:
        if r.get("steps") is None or (r.get(value) is None and r.get("status") != "failed"):
            continue
        key = (row_label(r), int(r["steps"]))
        keys.add(key)  # a failed job keeps its row and column, shown as '-'
        if r.get(value) is not None:
            cells[key] = float(r[value])
    rows = sorted({k[0] for k in keys}, key=_row_order)
    cols = sorted({k[1] for k in keys})
    return rows, cols, cells


def _fmt(v: float | None, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" if abs(v) >= 0.01 or v == 0 else f"{v:.2e}"


def markdown_table(
    rows: Sequence[str], cols: Sequence[int], cells: dict, title: str = "", digits: int = 2, col: str = "S"
) -> str:
    head = f"| {title} | " + " | ".join(f"{col}={c}" for c in cols) + " |"
    sep = "|---|" + "---|" * len(cols)
    body = [f"| {r} | " + " | ".join(_fmt(cells.get((r, c)), digits) for c in cols) + " |" for r in rows]
    return "\n".join([head, sep, *body]) + "\n"


def write_csv_table(
    path: Path, rows: Sequence[str], cols: Sequence[int], cells: dict, col: str = "S"
) -> None:
    with atomic_write(path, "w") as f:
        w = csv.writer(f)
        w.writerow(["row", *[f"{col}={c}" for c in cols]])
        for r in rows:
            w.writerow([r, *["" if cells.get((r, c)) is None else f"{cells[(r, c)]:.6g}" for c in cols]])


def write_records_csv(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Every measured field of every grid point, one line each (the long form of the table)."""
    keys: list[str] = []
    for r in records:
        keys += [k for k, v in r.items() if k not in keys and not isinstance(v, (dict, list))]
    with atomic_write(path, "w") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow(r)


def plot_fid_vs_steps(
    path: Path,
    rows: Sequence[str],
    cols: Sequence[int],
    cells: dict,
    value: str = "fid",
    xlabel: str = "S (sampling steps)",
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r in rows:
        xs = [c for c in cols if (r, c) in cells]
        ax.plot(
            xs, [cells[(r, c)] for c in xs], marker="o", linestyle="--" if r == "sigma_hat" else "-", label=r
        )
    ax.set_xscale("log")
    ax.set_xticks(list(cols))
    ax.set_xticklabels([str(c) for c in cols])
    ax.xaxis.set_minor_formatter(NullFormatter())  # the columns are labelled; no "6x10^0" between them
    values = [v for v in cells.values() if v > 0]
    if values and max(values) / min(values) > 50:
        ax.set_yscale("log")
        # Plain numbers (5, 20, 100), not matplotlib's "2x10^1"; between decades only the 2s and 5s.
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(
            FuncFormatter(lambda v, _: f"{v:g}" if _leading_digit(v) in (2, 5) else "")
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(value.upper())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    write_figure(fig, path)


def _leading_digit(v: float) -> int:
    return round(v / 10 ** math.floor(math.log10(v))) if v > 0 else 0


def paper_key(data_target: str | None) -> str | None:
    """Which paper table to compare with, from the data module class."""
    if not data_target:
        return None
    if "CIFAR10" in data_target:
        return "cifar10"
    if "CelebA" in data_target:
        return "celeba64"
    return None


def write_table1(
    records: Sequence[dict[str, Any]], out_dir: str | Path, value: str = "fid", paper: str | None = None
) -> dict[str, Path]:
    """table1.md / table1.csv (rows eta and sigma_hat, columns S), results.csv and fid_vs_steps.png."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    all_records, records = records, [r for r in records if is_ddim(r)]
    rows, cols, cells = pivot(records, value)
    if not cells:
        raise ValueError(f"No record holds {value!r}; nothing to tabulate.")
    n = sorted({int(r["n_samples"]) for r in records if r.get("n_samples") is not None})
    title = f"{value.upper()} ({', '.join(map(str, n))} samples)" if n else value.upper()
    md = markdown_table(rows, cols, cells, title)
    nfe = {(row_label(r), int(r["steps"])): r.get("nfe") for r in records if r.get("steps") is not None}
    if any(nfe.get((rw, c)) not in (None, c) for rw in rows for c in cols):
        md += "\nNetwork evaluations per sample (NFE):\n\n" + markdown_table(rows, cols, nfe, "NFE", 0)
    if paper in PAPER_TABLE1:
        ref = PAPER_TABLE1[paper]
        ref_cells = {(rw, c): v for rw, d in ref.items() for c, v in d.items()}
        md += f"\nDDIM paper, {paper} (50,000 samples):\n\n" + markdown_table(
            list(ref), cols, ref_cells, "paper"
        )
    paths = {name: out_dir / name for name in TABLE1_FILES}
    write_text(paths["table1.md"], md)
    write_csv_table(paths["table1.csv"], rows, cols, cells)
    write_records_csv(paths["results.csv"], all_records)
    plot_fid_vs_steps(paths["fid_vs_steps.png"], rows, cols, cells, value)
    log.info("Table 1:\n" + md)
    return paths


def nfe_pivot(records: Iterable[dict[str, Any]], value: str = "fid") -> tuple[list[str], list[int], dict]:
    """(sampler labels, NFE values, {(label, NFE): value}): rows keep the order samplers first appear in; a
    failed job keeps its row and column, shown as '-' (as in Table 1)."""
    cells: dict[tuple[str, int], float] = {}
    rows: list[str] = []
    cols: set[int] = set()
    for r in records:
        failed = r.get("status") == "failed"
        if r.get("nfe") is None or (r.get(value) is None and not failed):
            continue
        label = r.get("sampler_label") or f"{r.get('sampler', 'ddim')}"
        rows += [label] * (label not in rows)
        cols.add(int(r["nfe"]))
        if r.get(value) is not None:
            cells[(label, int(r["nfe"]))] = float(r[value])
    return rows, sorted(cols), cells


def write_nfe_table(
    records: Sequence[dict[str, Any]], out_dir: str | Path, value: str = "fid"
) -> dict[str, Path]:
    """nfe_table.md / .csv (rows: sampler settings, columns: network calls actually made), fid_vs_nfe.png and
    results.csv: the quality-per-NFE comparison of a sweep over samplers (e.g. sampler=ddim,dpm_solver_pp)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, cols, cells = nfe_pivot(records, value)
    if not cells:
        raise ValueError(f"No record holds {value!r} and nfe; nothing to tabulate.")
    n = sorted({int(r["n_samples"]) for r in records if r.get("n_samples") is not None})
    title = f"{value.upper()} ({', '.join(map(str, n))} samples)" if n else value.upper()
    md = markdown_table(rows, cols, cells, title, col="NFE")
    paths = {name: out_dir / name for name in NFE_FILES}
    write_text(paths["nfe_table.md"], md)
    write_csv_table(paths["nfe_table.csv"], rows, cols, cells, col="NFE")
    write_records_csv(paths["results.csv"], records)
    plot_fid_vs_steps(
        paths["fid_vs_nfe.png"], rows, cols, cells, value, xlabel="NFE (network calls per sample)"
    )
    log.info("Quality per NFE:\n" + md)
    return paths


def write_table2(results: dict[int, float], out_dir: str | Path, n_images: int) -> dict[str, Path]:
    """Reconstruction MSE per S (Table 2 layout), with the paper's CIFAR10 row for comparison."""
    out_dir = Path(out_dir)
    cols = sorted(results)
    cells = {("ours", c): results[c] for c in cols}
    cells.update({("paper (CIFAR10)", c): PAPER_TABLE2[c] for c in cols if c in PAPER_TABLE2})
    rows = ["ours", "paper (CIFAR10)"] if any(c in PAPER_TABLE2 for c in cols) else ["ours"]
    md = markdown_table(rows, cols, cells, f"MSE on [0,1], {n_images} test images", digits=4)
    paths = {"table2.md": out_dir / "table2.md", "table2.csv": out_dir / "table2.csv"}
    write_text(paths["table2.md"], md)
    write_csv_table(paths["table2.csv"], rows, cols, cells)
    log.info("Table 2:\n" + md)
    return paths
