"""Quality per network call, exactly: KL(sample law || data) of every sampler on Gaussian data.

Data x0 ~ N(0, diag(v)) with v = logspace(-4, 0, 32) (variances 1e-4 .. 1), T = 1000, DDPM's linear schedule,
the exact eps (ddim.diffusion.oracle). Every sampler step is then affine in x and in its noise draws, per
dimension, so the output law is Gaussian and is computed exactly by running the sampler itself on a few
rows: x_T = 0 gives the offset, x_T = 1 the slope, and for stochastic samplers each noise draw is replaced
by a unit impulse on its own row (the variance is the sum of the squared responses). No sampling error.
Check of the KL computation: DDIM with quadratic spacing at S = 10 gives 2.33.

Rows: sampler settings, columns: NFE (network calls actually made, Sampler.nfe), one table per
spacing; a cell takes the most steps whose NFE fits (marked with the NFE it reached when that is fewer).
Last-step treatments searched: final_step denoise | none, lower_order_final on | off.

    python benchmarks/solver_table.py
    python benchmarks/solver_table.py --nfe 5 10 20 50 --spacings uniform logsnr karras
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import torch

from ddim.diffusion.oracle import GaussianOracle
from ddim.diffusion.schedule import Schedule
from ddim.errors import DDIMError
from ddim.samplers import SAMPLERS, Sampler, make_sampler

ROWS = [
    ("DDIM", dict(name="ddim")),
    ("DDPM (eta 1)", dict(name="ddim", eta=1.0)),
    ("Euler-ancestral", dict(name="euler_ancestral", eta=1.0)),
    ("SDE-DPM-Solver++(2M)", dict(name="sde_dpm_solver_pp", order=2)),
    ("DPM-Solver++(2M)", dict(name="dpm_solver_pp", order=2)),
    ("DPM-Solver++(3M)", dict(name="dpm_solver_pp", order=3)),
    ("DPM-Solver++(3M) taylor", dict(name="dpm_solver_pp", order=3, solver_type="heun")),
    ("DPM-Solver-2 (single)", dict(name="dpm_solver", order=2)),
    ("DPM-Solver-3 (single)", dict(name="dpm_solver", order=3)),
    ("UniPC-2 bh2", dict(name="unipc", order=2)),
    ("UniPC-3 bh2", dict(name="unipc", order=3)),
    ("UniPC-2 bh1", dict(name="unipc", order=2, variant="bh1")),
    ("Heun", dict(name="heun")),
    ("PNDM (prk)", dict(name="pndm")),
    ("PNDM (plms)", dict(name="pndm", warm_start="plms")),
]
# Modules whose noise draws are replaced by impulses (each imports randn from ddim.samplers.base).
NOISE_SITES = ("ddim.samplers.ddim", "ddim.samplers.dpm_solver", "ddim.samplers.karras")


def output_law(cfg: Sampler, oracle: GaussianOracle, schedule: Schedule) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-dimension (mean, var) of cfg's output from x_T ~ N(0, I)."""
    d = oracle.mean.numel()
    draws = 2 * len(cfg.sequence(schedule)) + 2  # more rows than draws
    x_T = torch.zeros(2 + draws, d, dtype=torch.float64)
    x_T[1] = 1.0
    count = [0]

    def impulse(shape, generator, device, dtype):
        z = torch.zeros(shape, dtype=dtype, device=device)
        z[2 + count[0]] = 1.0
        count[0] += 1
        return z

    with ExitStack() as stack:
        for site in NOISE_SITES:
            stack.enter_context(mock.patch(f"{site}.randn", impulse))
        y = cfg.run(oracle.eps, x_T, schedule)
    offset, slope, noise = y[0], y[1] - y[0], y[2 : 2 + count[0]] - y[0]
    return offset, slope**2 + (noise**2).sum(0)


def kl_to_data(mean: torch.Tensor, var: torch.Tensor, oracle: GaussianOracle) -> float:
    v0 = oracle.std**2
    return float(0.5 * (var / v0 + (mean - oracle.mean) ** 2 / v0 - 1 - torch.log(var / v0)).sum())


def cell(base: Sampler, nfe: int, oracle, schedule) -> tuple[float, int] | None:
    """KL at the most steps whose NFE is <= nfe, with the NFE reached."""
    best = None
    for steps in range(1, 3 * nfe + 2):
        try:
            cfg = dataclasses.replace(base, steps=steps).check_schedule(schedule)
        except ValueError:
            continue
        used = cfg.nfe(schedule)
        if used <= nfe and (best is None or used >= best[1]):
            best = (cfg, used)
    if best is None:
        return None
    return kl_to_data(*output_law(best[0], oracle, schedule), oracle), best[1]


def fmt(result: tuple[float, int] | None, nfe: int) -> str:
    if result is None:
        return "-"
    kl, used = result
    return f"{kl:.3g}" + ("" if used == nfe else f" ({used})")


SHIPPED = ("ddim", "euler", "dpm_solver_pp", "dpm_solver", "unipc", "heun", "pndm")


def shipped_table(nfes: list[int], oracle: GaussianOracle, schedule: Schedule) -> None:
    """KL of each shipped default (conf/sampler/<name>.yaml) at each NFE, and of the same sampler with the
    timesteps task=optimize_timesteps finds on the oracle (top fixed at T - 1, 256 latents)."""
    from omegaconf import OmegaConf

    from ddim.evaluation.tasks.optimize_timesteps import reference, search, search_latents
    from ddim.samplers.base import sampler_from_settings

    root = Path(__file__).resolve().parents[1]
    ref = reference(oracle.eps, schedule, search_latents(256, 0, tuple(oracle.mean.shape)), 100, 500, 256)
    print("| shipped default | " + " | ".join(f"NFE {n}" for n in nfes) + " | optimized: " + " | ".join(
        f"NFE {n}" for n in nfes) + " |")  # fmt: skip
    print("|---" * (2 * len(nfes) + 1) + "|")
    for name in SHIPPED:
        shipped = sampler_from_settings(OmegaConf.load(root / "conf" / "sampler" / f"{name}.yaml"))
        fixed = [fmt(cell(shipped, n, oracle, schedule), n) for n in nfes]
        found = []
        for n in nfes:
            try:
                result = search(
                    oracle.eps, schedule, shipped, ref, n, refine_rounds=3, batch=256, start_signal=0.0
                )
            except DDIMError:  # an NFE the sampler cannot make exactly
                found.append("-")
                continue
            tuned = dataclasses.replace(shipped, timesteps=tuple(result.timesteps))
            found.append(f"{kl_to_data(*output_law(tuned, oracle, schedule), oracle):.3g}")
        print(f"| {shipped.label()} | " + " | ".join(fixed) + " | " + " | ".join(found) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument(
        "--spacings", nargs="+", default=["uniform", "quadratic", "logsnr", "karras", "trailing"]
    )
    parser.add_argument("--dims", type=int, default=32)
    parser.add_argument(
        "--shipped",
        action="store_true",
        help="only the shipped defaults (conf/sampler) and their optimized timesteps",
    )
    args = parser.parse_args()

    schedule = Schedule.from_config()
    variances = torch.logspace(-4, 0, args.dims, dtype=torch.float64)
    oracle = GaussianOracle(torch.zeros(args.dims, dtype=torch.float64), variances.sqrt(), schedule)
    check = make_sampler("ddim", steps=10, skip_type="quadratic")
    print(
        f"Data N(0, diag(logspace(-4, 0, {args.dims}))), T = 1000, linear betas. Check: DDIM quadratic S=10 "
        f"KL = {kl_to_data(*output_law(check, oracle, schedule), oracle):.4f} (expected 2.33)\n"
    )
    if args.shipped:
        shipped_table(args.nfe, oracle, schedule)
        return

    best: dict[int, list[tuple[float, str]]] = {n: [] for n in args.nfe}
    for spacing in args.spacings:
        print(f"### spacing = {spacing} (final_step=denoise, lower_order_final=true)\n")
        print("| sampler | " + " | ".join(f"NFE {n}" for n in args.nfe) + " |")
        print("|---" * (len(args.nfe) + 1) + "|")
        for label, options in ROWS:
            variants = [("denoise", True), ("denoise", False), ("none", True), ("none", False)]
            fields = {f.name for f in dataclasses.fields(SAMPLERS[options["name"]])}
            if "final_step" not in fields:
                variants = [("denoise", True)]
            elif "lower_order_final" not in fields:
                variants = [("denoise", True), ("none", True)]  # the option exists only where it is used
            for final, lof in variants:
                name = options["name"]
                extra = {"final_step": final} if "final_step" in fields else {}
                extra.update({"lower_order_final": lof} if "lower_order_final" in fields else {})
                own = {k: v for k, v in options.items() if k != "name"}
                base = make_sampler(name, skip_type=spacing, **extra, **own)
                results = [cell(base, n, oracle, schedule) for n in args.nfe]
                for n, r in zip(args.nfe, results, strict=True):
                    if r is not None and r[1] == n:
                        name = f"{label}, {spacing}, final_step={final}, lower_order_final={str(lof).lower()}"
                        best[n].append((r[0], name))
                if (final, lof) == ("denoise", True):
                    print(
                        f"| {label} | "
                        + " | ".join(fmt(r, n) for r, n in zip(results, args.nfe, strict=True))
                        + " |"
                    )
        print()
    print("### best spacing and last-step treatment per sampler at each NFE (exact NFE only; lowest first)\n")
    for n in args.nfe:
        per_sampler: dict[str, tuple[float, str]] = {}
        for kl, name in best[n]:
            label = name.split(", ")[0]
            if math.isfinite(kl) and (label not in per_sampler or kl < per_sampler[label][0]):
                per_sampler[label] = (kl, name)
        print(f"NFE {n}:")
        for kl, name in sorted(per_sampler.values()):
            print(f"  {kl:.4g}  {name}")


if __name__ == "__main__":
    main()
