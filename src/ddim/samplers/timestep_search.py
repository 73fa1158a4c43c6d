"""Timestep search on a fine grid (the maths of task=optimize_timesteps; stateless, no network).

GITS (Chen et al. 2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling", arXiv 2405.11326):
an accurate reference solver is run from a few hundred x_T through a fine grid of timesteps g_0 > g_1 > ...
(g_0 = T - 1, where x_T ~ N(0, I) is a fair start); the cost of jumping from grid point i to j is how far one
first-order (DDIM / Euler) step from the reference state at g_i lands from the reference state at g_j, and
dynamic programming picks the path of the wanted length with the least total cost. The cost is that of the
first-order step, as in the paper's code, whatever the solver that will use the sequence: a multistep
solver's local error depends on the history, so it is not a cost of one edge.

`edge_costs` builds the GITS cost matrix from a reference trajectory, `best_path` is the dynamic programme
(the top of the chain is fixed at grid point 0), and `coordinate_descent` polishes a path on any objective,
e.g. the chosen solver's own distance to the reference solution (task=optimize_timesteps does that second
step; see its docstring).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence

import torch

from ddim.diffusion.forward import eps_from_x0

BOX_POINTS = 4  # paths with at most this many free points also try every -1/0/+1 move (3^4 = 81)
RUN_LENGTH = 2  # the longest run of consecutive points a move shifts together


def distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over samples of the root-mean-square difference per sample (x, y: (n, ...))."""
    diff = (x - y).reshape(x.shape[0], -1).to(torch.float64)
    return float(diff.pow(2).mean(dim=1).sqrt().mean())


def edge_costs(
    states: Sequence[torch.Tensor],
    x0s: Sequence[torch.Tensor],
    alphas_cumprod: Sequence[float],
    x0_ref: torch.Tensor,
    final_step: str = "denoise",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(edge[i, j], terminal[i]) from a reference trajectory on the grid (index 0 = the noisiest point).

    states[i]: the reference state at grid point i; x0s[i]: the network's clean estimate there; x0_ref: the
    reference solution. edge[i, j] (j > i) = distance of the first-order (DDIM, eta = 0) step i -> j to
    states[j], inf elsewhere. terminal[i]: what ending the chain at grid point i costs: with final_step
    "denoise" the last call's x0 estimate against x0_ref, with "none" the state itself (kept noisy).
    """
    g = len(states)
    edge = torch.full((g, g), math.inf, dtype=torch.float64)
    for i in range(g - 1):
        a_i = alphas_cumprod[i]
        eps = eps_from_x0(states[i], x0s[i], math.sqrt(a_i), math.sqrt(1.0 - a_i))
        for j in range(i + 1, g):
            a_j = alphas_cumprod[j]
            step = torch.add(x0s[i] * math.sqrt(a_j), eps, alpha=math.sqrt(1.0 - a_j))
            edge[i, j] = distance(step, states[j])
    ends = x0s if final_step == "denoise" else states
    terminal = torch.tensor([distance(end, x0_ref) for end in ends], dtype=torch.float64)
    return edge, terminal


def best_path(
    edge: torch.Tensor, terminal: torch.Tensor, points: int, start: torch.Tensor | None = None
) -> tuple[list[int], float]:
    """The increasing path of `points` grid indices that minimises its start cost plus the sum of its edge
    costs plus the terminal cost of its last point (dynamic programming, O(points * G^2)); (path, its cost).
    start[i]: the cost of starting at grid point i (inf where a chain may not start); None: 0 at grid
    point 0, the top of the grid, and nowhere else."""
    g = edge.shape[0]
    if not 1 <= points <= g:
        raise ValueError(f"A path of {points} points does not fit a grid of {g}.")
    # cost[k][j]: the least cost of a path of k + 1 points ending at j; parent[k][j]: its previous point.
    cost = torch.full((points, g), math.inf, dtype=torch.float64)
    parent = torch.zeros((points, g), dtype=torch.int64)
    if start is None:
        cost[0, 0] = 0.0
    else:
        cost[0] = start.to(torch.float64)
    for k in range(1, points):
        through = cost[k - 1][:, None] + edge  # [i, j]: reach i with k points, then jump to j
        cost[k], parent[k] = through.min(dim=0)
    total = cost[points - 1] + terminal
    last = int(total.argmin())
    path = [last]
    for k in range(points - 1, 0, -1):
        path.append(int(parent[k, path[-1]]))
    return path[::-1], float(total[last])


def coordinate_descent(
    objective: Callable[[tuple[int, ...]], float],
    start: Sequence[int],
    grid_size: int,
    rounds: int,
    first_max: int = 0,
) -> tuple[tuple[int, ...], float, int]:
    """Move a run of consecutive points of an increasing path of grid indices together, by steps of
    grid_size // 16 down to 1, keeping a move when the objective falls; at most `rounds` passes, fewer once
    a pass changes nothing. The first point stays in [0, first_max] (0: it stays at 0). Moving runs, not
    only single points, lets the search follow valleys where neighbouring timesteps must move together.
    Returns (path, objective, evaluations)."""
    seen: dict[tuple[int, ...], float] = {}

    def value(path: tuple[int, ...]) -> float:
        if path not in seen:
            seen[path] = objective(path)
        return seen[path]

    best = tuple(start)
    best_value = value(best)
    sizes = [s for s in (16, 8, 4, 2, 1) if s <= max(1, grid_size // 16)]
    for _ in range(rounds):
        improved = False
        for size in sizes:
            for candidate in neighbours(best, size, grid_size, first_max):
                if value(candidate) < best_value:
                    best, best_value, improved = candidate, value(candidate), True
        if not improved:
            break
    return best, best_value, len(seen)


def neighbours(
    path: tuple[int, ...], size: int, grid_size: int, first_max: int = 0
) -> Iterator[tuple[int, ...]]:
    """Paths one move of `size` away: runs of consecutive points shifted together; at size 1 on short paths
    also every combination of -1 / 0 / +1 for the free points (all of them may need to move at once). The
    first point moves only within [0, first_max]."""
    free = 0 if first_max > 0 else 1
    for first, last in blocks(len(path), free):
        for delta in (size, -size):
            moved = (*path[:first], *(i + delta for i in path[first : last + 1]), *path[last + 1 :])
            if valid(moved, grid_size, first_max):
                yield moved
    if size == 1 and len(path) - free <= BOX_POINTS:
        for deltas in itertools.product((-1, 0, 1), repeat=len(path) - free):
            moved = (*path[:free], *(i + d for i, d in zip(path[free:], deltas, strict=True)))
            if moved != path and valid(moved, grid_size, first_max):
                yield moved


def blocks(points: int, free: int = 1) -> list[tuple[int, int]]:
    """(first, last) of the runs of up to RUN_LENGTH consecutive points from index `free` on; single points
    first."""
    runs = [(p, q) for p in range(free, points) for q in range(p, min(points, p + RUN_LENGTH))]
    return sorted(runs, key=lambda run: run[1] - run[0])


def valid(path: Sequence[int], grid_size: int, first_max: int) -> bool:
    """Increasing, on the grid, and starting in [0, first_max]."""
    return (
        0 <= path[0] <= first_max and path[-1] < grid_size and all(a < b for a, b in itertools.pairwise(path))
    )


def coarse_paths(grid_size: int, points: int, budget: int) -> list[tuple[int, ...]]:
    """Every path of `points` grid indices from 0 on the largest evenly spaced sub-grid (0 and the last
    index included) that gives at most `budget` paths: an exhaustive start for coordinate_descent. None
    when that sub-grid would have fewer than twice `points` points (too coarse to be worth its cost)."""
    size = points
    while size < grid_size and math.comb(size, points - 1) <= budget:
        size += 1  # the sub-grid of size + 1 points leaves `size` choices below the fixed top
    if size < min(grid_size, 2 * points):
        return []
    coarse = sorted({round(i * (grid_size - 1) / (size - 1)) for i in range(size)}) if size > 1 else [0]
    return [(0, *rest) for rest in itertools.combinations(coarse[1:], points - 1)]
