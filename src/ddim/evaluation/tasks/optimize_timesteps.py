"""task=optimize_timesteps: the timestep sequence that brings the run's sampler closest to an accurate
solution at a given NFE, for this checkpoint; written as timesteps.json for `sampler.timesteps_file=PATH`.

Method: GITS (Chen et al. 2024, arXiv 2405.11326), then a polish on the solver itself.
1. Reference: DPM-Solver++(2M) with `reference_steps` steps (plus every grid point) from n_x latents x_T,
   keeping its state and the network's x0 estimate at each grid point. The grid is `grid` timesteps spaced
   evenly in log-SNR from T - 1 to 0. The chain may start at any grid timestep where q(x_t) is still close
   to N(0, I): sqrt(a_t) <= `start_signal` (0.04 by default: t >= 797 on DDPM's schedule, where DDIM's
   quadratic rule starts; 0 keeps T - 1). Starting it lower would win on the error but sample from a prior
   the model does not have; the start costs the distance of x_T to the reference state there.
2. GITS: the cost of jumping from grid point i to j is the distance of one first-order (DDIM) step from the
   reference state at i to the reference state at j (ddim.samplers.timestep_search.edge_costs); dynamic
   programming picks the sequence of the needed length with the least total cost. This costs no network call
   beyond the reference. The first-order cost serves every solver (as in GITS, whose sequences are then used
   with iPNDM and others): a multistep solver's local error depends on the points before, which no edge cost
   can hold.
3. Polish: the chosen sampler itself is run on the n_x latents with the GITS sequence and with each fixed
   spacing (uniform, quadratic, logsnr, karras, trailing, moved onto the grid); from the best of these,
   coordinate descent moves timesteps along the grid while the sampler's distance to the reference solution
   falls (`refine_rounds` passes; 0 keeps the GITS sequence). A fixed spacing as it ships (off the grid) that
   starts where the prior holds and is still closer is kept instead, so the result is never worse than the
   best fixed spacing on the search's own measure.
Why GITS rather than DMN (arXiv 2402.17376): DMN optimises a data-free bound that depends only on the noise
schedule, so it cannot adapt to a user's model, which is the point of a per-checkpoint search; GITS measures
the model's own trajectories at the cost of a few hundred reference calls per latent.

The latents of the search are the run seed's samples 2^30, 2^30 + 1, ... (per_sample_generators), not the
first ones an evaluation with the same seed draws, so a later FID does not score the search's own x_T.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Annotated, Any

import torch

from ddim.diffusion.schedule import Schedule, timestep_sequence
from ddim.errors import DDIMError
from ddim.evaluation.context import EvalContext
from ddim.evaluation.reports.results import TaskResult
from ddim.samplers import Sampler, Step, initial_noise, per_sample_generators
from ddim.samplers.base import EpsFn
from ddim.samplers.dpm_solver import DPMSolverPP
from ddim.samplers.timestep_search import best_path, coarse_paths, coordinate_descent, distance, edge_costs
from ddim.samplers.timesteps_file import file_sha256, schedule_sha256, write_timesteps_file
from ddim.settings import Count, NonNegativeInt, Range

log = logging.getLogger(__name__)

SEARCH_OFFSET = 1 << 30  # index of the first search latent among the run seed's samples
Path_ = tuple[int, ...]  # a path on the grid: increasing indices into Reference.grid_desc, 0 first
FIXED_SPACINGS = ("uniform", "quadratic", "logsnr", "karras", "trailing")
COARSE_EVALS = 200  # sequences tried exhaustively on a coarse sub-grid before the polish


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchResult:
    timesteps: list[int]  # increasing; the top where sqrt(a_t) <= start_signal (T - 1 if none is)
    distance: float  # the sampler's mean RMS distance to the reference solution on the search latents
    gits_timesteps: list[int]
    gits_distance: float
    start: str  # where the polish started ("gits", a fixed spacing, "coarse grid"), or "<spacing> as shipped"
    baselines: dict[str, float]  # each fixed spacing as it ships (its own top), same NFE
    grid: list[int]
    start_signal: float  # the chain may start where sqrt(a_t) <= this (0: at T - 1 only)
    reference_steps: int  # network calls of the reference solution per latent
    network_calls: int  # per latent: the reference + every run of the sampler
    seconds: float


class Counter:
    """The network (any eps function), counting the rows it evaluates."""

    def __init__(self, net: EpsFn) -> None:
        self.net, self.rows = net, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.rows += x.shape[0]
        return self.net(x, t)


def points_for_nfe(sampler: Sampler, nfe: int, schedule: Schedule) -> int:
    """How many distinct timesteps make the sampler call the network exactly nfe times."""
    for points in range(1, nfe + 2):
        candidate = dataclasses.replace(sampler, timesteps=tuple(range(points)), timesteps_file=None)
        try:
            if candidate.check_schedule(schedule).nfe(schedule) == nfe:
                return points
        except ValueError:
            continue
    raise DDIMError(
        f"sampler {sampler.label()} cannot make exactly {nfe} network calls per sample (it makes "
        f"{', '.join(str(n) for n in reachable(sampler, nfe, schedule))}, ...): choose another "
        "optimize_timesteps.nfe (or final_step)."
    )


def reachable(sampler: Sampler, upto: int, schedule: Schedule) -> list[int]:
    found = []
    for points in range(2, upto + 4):
        found.append(
            dataclasses.replace(sampler, timesteps=tuple(range(points)), timesteps_file=None).nfe(schedule)
        )
    return sorted(set(found))[:5]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Reference:
    """The reference solution from the search latents and its states on the grid (noisiest first)."""

    x_T: torch.Tensor
    grid_desc: list[int]  # the grid's timesteps, T - 1 first
    states: list[torch.Tensor]  # the reference state at each grid point
    x0s: list[torch.Tensor]  # the network's x0 estimate there
    x0_ref: torch.Tensor  # the reference solution
    steps: int  # network calls per latent
    seconds: float


def search_latents(
    n: int, seed: int, image_shape: tuple[int, ...], device: torch.device | str = "cpu"
) -> torch.Tensor:
    generators = per_sample_generators(seed, range(SEARCH_OFFSET, SEARCH_OFFSET + n))
    return initial_noise((n, *image_shape), generators, device=device)


@torch.inference_mode()
def reference(
    net: EpsFn, schedule: Schedule, x_T: torch.Tensor, grid_size: int, steps: int, batch: int
) -> Reference:
    """DPM-Solver++(2M) through the uniform `steps` timesteps and the log-SNR grid, from x_T."""
    start = time.perf_counter()
    T = schedule.num_timesteps
    grid = timestep_sequence(min(grid_size, T), "logsnr", T, alphas_cumprod=schedule.alphas_cumprod).tolist()
    fine = sorted(set(grid) | set(timestep_sequence(min(steps, T), "uniform", T).tolist()) | {T - 1})
    solver = DPMSolverPP(order=2, timesteps=tuple(fine))
    grid_desc = sorted(grid, reverse=True)
    position = {t: i for i, t in enumerate(grid_desc)}
    states: list[list[torch.Tensor]] = [[] for _ in grid]
    x0s: list[list[torch.Tensor]] = [[] for _ in grid]
    ends = []
    for x in x_T.split(batch):
        before = [x]

        def keep(step: Step, before: list[torch.Tensor] = before) -> None:
            if step.t in position:  # the network saw the state before this step at step.t
                states[position[step.t]].append(before[0])
                x0s[position[step.t]].append(step.x0_hat)
            before[0] = step.x

        ends.append(solver.run(net, x, schedule, callback=keep))
    return Reference(
        x_T=x_T, grid_desc=grid_desc, states=[torch.cat(s) for s in states], x0s=[torch.cat(s) for s in x0s],
        x0_ref=torch.cat(ends), steps=len(fine), seconds=time.perf_counter() - start,
    )  # fmt: skip


def snapped(
    sampler: Sampler, spacing: str, points: int, ref: Reference, schedule: Schedule, first_max: int
) -> Path_ | None:
    """A fixed spacing's sequence moved onto the grid (nearest grid point), its top kept where a chain may
    start (grid points 0..first_max) or else moved to T - 1; None if two timesteps land on one grid point."""
    seq = dataclasses.replace(sampler, steps=points, skip_type=spacing, timesteps=None, timesteps_file=None)
    ts = sorted(seq.sequence(schedule), reverse=True)
    g = ref.grid_desc
    idx = [min(range(len(g)), key=lambda i: abs(g[i] - t)) for t in ts]
    idx[0] = min(idx[0], first_max)
    return tuple(idx) if len(set(idx)) == len(idx) and idx == sorted(idx) else None


def may_start(schedule: Schedule, t: int, start_signal: float) -> bool:
    """Whether a chain may start at timestep t: at T - 1 always, elsewhere where sqrt(a_t) <= start_signal."""
    return t == schedule.num_timesteps - 1 or float(schedule.alphas_cumprod[t]) ** 0.5 <= start_signal


def start_range(schedule: Schedule, ref: Reference, start_signal: float) -> int:
    """The last grid index (noisiest first) where a chain may start (may_start); 0 is T - 1."""
    last = 0
    for i, t in enumerate(ref.grid_desc):
        if not may_start(schedule, t, start_signal):
            break
        last = i
    return last


class Objective:
    """The sampler's distance to the reference solution with the timesteps of a grid path (memoised)."""

    def __init__(self, net: EpsFn, schedule: Schedule, sampler: Sampler, ref: Reference, batch: int) -> None:
        self.net, self.schedule, self.sampler, self.ref, self.batch = (
            Counter(net),
            schedule,
            sampler,
            ref,
            batch,
        )
        self.memo: dict[Path_, float] = {}

    def output(self, sampler: Sampler) -> torch.Tensor:
        return torch.cat([sampler.run(self.net, x, self.schedule) for x in self.ref.x_T.split(self.batch)])

    def __call__(self, path: Path_) -> float:
        if path not in self.memo:
            timesteps = tuple(sorted(self.ref.grid_desc[i] for i in path))
            run = dataclasses.replace(self.sampler, timesteps=timesteps, timesteps_file=None)
            self.memo[path] = distance(self.output(run), self.ref.x0_ref)
        return self.memo[path]


@torch.inference_mode()
def search(net: EpsFn, schedule: Schedule, sampler: Sampler, ref: Reference, nfe: int, refine_rounds: int,
           batch: int, start_signal: float) -> SearchResult:  # fmt: skip
    """The GITS sequence, polished on the sampler itself (see the module docstring). start_signal > 0 lets
    the chain start at any grid timestep with sqrt(a_t) <= start_signal (0: at T - 1 only)."""
    start = time.perf_counter()
    points = points_for_nfe(sampler, nfe, schedule)
    grid = len(ref.grid_desc)
    if grid < points:
        raise DDIMError(
            f"optimize_timesteps.grid={grid} has fewer points than the {points} timesteps needed."
        )
    table = schedule.alphas_cumprod.tolist()
    final = getattr(sampler, "final_step", "denoise")
    edge, terminal = edge_costs(ref.states, ref.x0s, [table[t] for t in ref.grid_desc], ref.x0_ref, final)
    first_max = start_range(schedule, ref, start_signal)
    entry = torch.tensor(
        [distance(ref.x_T, ref.states[i]) if i <= first_max else math.inf for i in range(grid)]
    )
    gits, _ = best_path(edge, terminal, points, entry)
    objective = Objective(net, schedule, sampler, ref, batch)
    baselines, shipped = {}, {}
    for spacing in FIXED_SPACINGS:  # as they ship: the record, and a result the polish must beat
        fixed = dataclasses.replace(
            sampler, steps=points, skip_type=spacing, timesteps=None, timesteps_file=None
        )
        baselines[spacing] = distance(objective.output(fixed), ref.x0_ref)
        sequence = fixed.sequence(schedule)
        if may_start(schedule, sequence[-1], start_signal):
            shipped[spacing] = sequence
    starts = {"gits": tuple(gits)}
    starts |= {
        sp: p for sp in FIXED_SPACINGS if (p := snapped(sampler, sp, points, ref, schedule, first_max))
    }
    coarse = coarse_paths(grid, points, COARSE_EVALS) if refine_rounds else []
    if coarse:
        starts["coarse grid"] = min(coarse, key=objective)
    first = min(starts, key=lambda name: objective(starts[name]))
    best, best_value, _ = coordinate_descent(objective, starts[first], grid, refine_rounds, first_max)
    timesteps = sorted(ref.grid_desc[i] for i in best)
    kept = min(shipped, key=baselines.__getitem__, default=None)
    if kept is not None and baselines[kept] < best_value:
        timesteps, best_value, first = list(shipped[kept]), baselines[kept], f"{kept} as shipped"
    return SearchResult(
        timesteps=timesteps, distance=best_value,
        gits_timesteps=sorted(ref.grid_desc[i] for i in gits), gits_distance=objective(tuple(gits)),
        start=first, baselines=baselines, grid=sorted(ref.grid_desc), start_signal=start_signal,
        reference_steps=ref.steps, network_calls=ref.steps + round(objective.net.rows / ref.x_T.shape[0]),
        seconds=ref.seconds + time.perf_counter() - start,
    )  # fmt: skip


def write_result(
    path: Any, result: SearchResult, sampler: Sampler, schedule: Schedule, checkpoint: str
) -> Any:
    """timesteps.json: what the sequence is bound to (sampler, NFE, schedule, checkpoint) and what it cost."""
    bound = dataclasses.replace(sampler, steps=len(result.timesteps), timesteps=None, timesteps_file=None)
    nfe = dataclasses.replace(bound, timesteps=tuple(result.timesteps)).nfe(schedule)
    return write_timesteps_file(
        path,
        {
            "sampler": {"name": sampler.name, "label": bound.label(), "settings": bound.settings()},
            "nfe": nfe,
            "timesteps": result.timesteps,
            "schedule": {
                "num_timesteps": schedule.num_timesteps,
                "betas_sha256": schedule_sha256(schedule),
                "beta_first": float(schedule.betas[0]),
                "beta_last": float(schedule.betas[-1]),
            },
            "checkpoint": {"path": str(checkpoint), "sha256": file_sha256(checkpoint)},
            "search": {
                "method": "GITS (arXiv 2405.11326) dynamic programming on first-order local errors, then "
                "coordinate descent on the sampler's distance to the reference",
                **{k: v for k, v in dataclasses.asdict(result).items() if k != "timesteps"},
            },
        },
    )


def run(
    ctx: EvalContext,
    *,
    nfe: Count,
    n_x: Count,
    reference_steps: Count,
    grid: Count,
    refine_rounds: NonNegativeInt,
    start_signal: Annotated[float, Range(ge=0, lt=1)],
) -> TaskResult:
    if ctx.sampler.stochastic:
        raise DDIMError(
            f"task=optimize_timesteps searches timesteps for deterministic samplers; {ctx.sampler.tag()} adds "
            "noise. Use sampler=ddim (eta 0), dpm_solver_pp, unipc, dpm_solver, heun, pndm or euler."
        )
    points_for_nfe(ctx.sampler, nfe, ctx.schedule)  # refuse an NFE the sampler cannot make before any work
    net = ctx.net.to(ctx.device).eval()
    x_T = search_latents(n_x, ctx.seed, ctx.image_shape, ctx.device)
    ref = reference(net, ctx.schedule, x_T, grid, reference_steps, ctx.generation.batch_size)
    result = search(
        net, ctx.schedule, ctx.sampler, ref, nfe, refine_rounds, ctx.generation.batch_size, start_signal
    )
    path = write_result(ctx.output_dir / "timesteps.json", result, ctx.sampler, ctx.schedule, ctx.checkpoint)
    log.info(
        f"{ctx.sampler.name} at NFE {nfe}: timesteps {result.timesteps}, distance {result.distance:.4f} "
        f"(GITS {result.gits_distance:.4f}; fixed spacings "
        + ", ".join(f"{k} {v:.4f}" for k, v in result.baselines.items())
        + f"); {result.network_calls} network calls per latent, {result.seconds:.1f} s -> {path}"
    )
    record = {
        "task": "optimize_timesteps",
        "sampler": ctx.sampler.name,
        "sampler_settings": {**ctx.sampler.settings(), "steps": len(result.timesteps)},
        "nfe": nfe,
        "checkpoint": ctx.checkpoint,
        "seed": ctx.seed,
        "n_x": n_x,
        **dataclasses.asdict(result),
        "timesteps_file": str(path),
    }
    return TaskResult(record)
