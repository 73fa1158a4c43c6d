"""The timestep search: the GITS dynamic programme against brute force, its costs against a sampler step, the
whole search against the best sequence on a grid of the Gaussian oracle (closed-form ODE solution)."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

from ddim.diffusion.oracle import GaussianOracle
from ddim.diffusion.schedule import Schedule, timestep_sequence
from ddim.evaluation.tasks.optimize_timesteps import reference, search, search_latents
from ddim.samplers import generalized_step, make_sampler
from ddim.samplers.timestep_search import (
    best_path,
    coarse_paths,
    coordinate_descent,
    distance,
    edge_costs,
)

SCHED = Schedule.from_config()  # DDPM's linear schedule, T = 1000
D = 16
VAR = torch.logspace(-2, 0, D, dtype=torch.float64)
ORACLE = GaussianOracle(torch.linspace(-0.5, 0.5, D, dtype=torch.float64), VAR.sqrt(), SCHED)


def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return ORACLE.eps(x.to(torch.float64), t).to(x.dtype)


def exact_flow(x_T: torch.Tensor, t: int) -> torch.Tensor:
    """The probability-flow ODE from x_{T-1} = x_T to timestep t (-1: the data) for Gaussian data: the
    standardised value (x - sqrt(a) mu) / sqrt(a s^2 + 1 - a) is constant along it."""
    a_T = float(SCHED.alphas_cumprod[-1])
    z = (x_T.to(torch.float64) - math.sqrt(a_T) * ORACLE.mean) / (a_T * VAR + 1 - a_T).sqrt()
    a = 1.0 if t < 0 else float(SCHED.alphas_cumprod[t])
    return math.sqrt(a) * ORACLE.mean + (a * VAR + 1 - a).sqrt() * z


def brute_force(edge, terminal, points, start=None) -> tuple[tuple[int, ...], float]:
    start = start if start is not None else torch.tensor([0.0] + [math.inf] * (edge.shape[0] - 1))
    best = None
    for path in itertools.combinations(range(edge.shape[0]), points):
        cost = float(start[path[0]]) + float(terminal[path[-1]])
        cost += sum(float(edge[a, b]) for a, b in itertools.pairwise(path))
        if best is None or cost < best[1]:
            best = (path, cost)
    return best


def test_dynamic_programme_finds_the_cheapest_path_of_random_costs():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        edge = torch.rand(9, 9, generator=g, dtype=torch.float64).triu(1)
        edge[torch.tril(torch.ones(9, 9, dtype=torch.bool))] = math.inf
        terminal = torch.rand(9, generator=g, dtype=torch.float64)
        start = torch.rand(9, generator=g, dtype=torch.float64)
        start[3:] = math.inf  # a chain may start at the first three grid points only
        for points in range(1, 7):
            path, cost = best_path(edge, terminal, points)
            expected_path, expected_cost = brute_force(edge, terminal, points)
            assert tuple(path) == expected_path and cost == pytest.approx(expected_cost, rel=1e-12)
            path, cost = best_path(edge, terminal, points, start)
            expected_path, expected_cost = brute_force(edge, terminal, points, start)
            assert tuple(path) == expected_path and cost == pytest.approx(expected_cost, rel=1e-12)
            assert path[0] < 3


def oracle_trajectory(grid_desc: list[int], x_T: torch.Tensor):
    states = [exact_flow(x_T, t) for t in grid_desc]
    x0s = [s - math.sqrt(1 - SCHED.alpha_bar(t)) * eps(s, torch.full((s.shape[0],), t)) for s, t in
           zip(states, grid_desc, strict=True)]  # fmt: skip
    x0s = [x0 / math.sqrt(SCHED.alpha_bar(t)) for x0, t in zip(x0s, grid_desc, strict=True)]
    return states, x0s, exact_flow(x_T, -1)


@pytest.mark.parametrize("final_step", ["denoise", "none"])
def test_gits_costs_are_ddim_steps_and_the_programme_finds_the_best_oracle_path(final_step):
    """On the oracle's exact trajectory (top fixed at T - 1), the edge cost is the distance of DDIM's own
    step to the exact state, and the DP's path is the brute-force optimum of the summed costs."""
    grid_desc = sorted(timestep_sequence(12, "logsnr", 1000, alphas_cumprod=SCHED.alphas_cumprod).tolist())[
        ::-1
    ]
    assert grid_desc[0] == 999
    x_T = torch.randn(32, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    states, x0s, x0_ref = oracle_trajectory(grid_desc, x_T)
    a = [SCHED.alpha_bar(t) for t in grid_desc]
    edge, terminal = edge_costs(states, x0s, a, x0_ref, final_step)
    i, j = 2, 7
    e = eps(states[i], torch.full((32,), grid_desc[i]))
    step, _ = generalized_step(states[i], e, a[i], a[j], 0.0, None)
    assert float(edge[i, j]) == pytest.approx(distance(step, states[j]), rel=1e-9)
    assert math.isinf(edge[j, i]) and math.isinf(edge[i, i])
    for points in (2, 3, 4):
        path, cost = best_path(edge, terminal, points)
        expected_path, expected_cost = brute_force(edge, terminal, points)
        assert tuple(path) == expected_path and cost == pytest.approx(expected_cost, rel=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "options", "nfe"), [("ddim", {}, 3), ("unipc", {"order": 2}, 4)])
def test_search_finds_the_best_sequence_on_an_oracle_grid(name, options, nfe):
    """The whole search (GITS, then the polish on the sampler) against every sequence of the same grid with
    the top at T - 1, scored against the exact ODE solution of the Gaussian oracle."""
    sampler = make_sampler(name, **options)
    x_T = search_latents(64, 0, (D,))
    ref = reference(eps, SCHED, x_T, grid_size=12, steps=1000, batch=64)
    assert distance(ref.x0_ref, exact_flow(x_T, -1)) < 1e-3  # the reference solver is accurate here
    result = search(eps, SCHED, sampler, ref, nfe, refine_rounds=3, batch=64, start_signal=0.0)
    grid = sorted(ref.grid_desc)
    scores = {}
    for rest in itertools.combinations(grid[:-1], len(result.timesteps) - 1):
        seq = (*rest, 999)
        out = dataclasses.replace(sampler, timesteps=seq).run(eps, x_T, SCHED)
        scores[seq] = distance(out, exact_flow(x_T, -1))
    best = min(scores, key=scores.get)
    assert result.timesteps[-1] == 999 and tuple(result.timesteps) == best
    assert result.distance <= min(result.baselines.values())
    assert result.network_calls > ref.steps


def test_a_later_start_is_searched_only_where_the_prior_holds():
    """start_signal = 0.04 lets the chain start at any grid timestep with sqrt(a_t) <= 0.04 (t >= 797 on
    DDPM's schedule); start_signal = 0 keeps it at T - 1."""
    x_T = search_latents(32, 0, (D,))
    ref = reference(eps, SCHED, x_T, grid_size=40, steps=200, batch=32)
    fixed = search(eps, SCHED, make_sampler("ddim"), ref, 3, refine_rounds=1, batch=32, start_signal=0.0)
    free = search(eps, SCHED, make_sampler("ddim"), ref, 3, refine_rounds=1, batch=32, start_signal=0.04)
    assert fixed.timesteps[-1] == 999 and 797 <= free.timesteps[-1] <= 999
    assert free.distance <= fixed.distance
    # never worse than a fixed spacing that starts where the prior holds (uniform's 3 steps start at 666)
    assert free.distance <= min(v for k, v in free.baselines.items() if k != "uniform")


def test_coarse_paths_and_coordinate_descent_on_a_known_minimum():
    paths = coarse_paths(100, 3, 200)
    assert 150 < len(paths) <= 200 and all(p[0] == 0 and p[1] < p[2] <= 99 for p in paths)
    assert coarse_paths(5, 3, 200) == [(0, *c) for c in itertools.combinations(range(1, 5), 2)]
    assert coarse_paths(100, 10, 200) == []  # a sub-grid of 12 points is too coarse for 10
    target = (0, 23, 24, 61)  # two neighbours must move together at the end
    path, value, evals = coordinate_descent(
        lambda p: sum((a - b) ** 2 for a, b in zip(p, target, strict=True)), (0, 40, 50, 60), 100, 20
    )
    assert path == target and value == 0 and evals > 1
    moved, _, _ = coordinate_descent(lambda p: sum((a - b) ** 2 for a, b in zip(p, (2, 23), strict=True)),
                                     (0, 40), 100, 20, first_max=5)  # fmt: skip
    assert moved == (2, 23)
    kept, _, _ = coordinate_descent(lambda p: sum((a - b) ** 2 for a, b in zip(p, (9, 23), strict=True)),
                                    (0, 40), 100, 20, first_max=5)  # fmt: skip
    assert kept == (5, 23)  # the first point stops at first_max
