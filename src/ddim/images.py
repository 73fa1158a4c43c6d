"""Image grids: many model-space images ([-1, 1] floats, or uint8) laid out as one PNG a person can look at."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from ddim.io import save_image, to_uint8

MIN_GRID_WIDTH = 512  # pixels; smaller grids (8x8 digits) are upscaled so they can be seen without zooming


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> torch.Tensor:
    """A uint8 (C, H', W') grid of images.

    images: (N, C, H, W) in [-1, 1] (or uint8), filled row by row with `nrow` images per row
    (default: ceil(sqrt(N))); or (rows, cols, C, H, W), laid out as given.
    """
    if images.ndim == 5:
        rows, cols = images.shape[:2]
        images = images.reshape(rows * cols, *images.shape[2:])
        nrow = cols if nrow is None else nrow
    if images.ndim != 4:
        raise ValueError(
            f"Expected images of shape (N, C, H, W) or (rows, cols, C, H, W), got {tuple(images.shape)}."
        )
    pixels = to_uint8(images).cpu()
    n, c, h, w = pixels.shape
    nrow = max(1, min(nrow or math.ceil(math.sqrt(n)), n))
    n_rows = math.ceil(n / nrow)
    grid = torch.zeros(
        (c, n_rows * (h + padding) + padding, nrow * (w + padding) + padding), dtype=torch.uint8
    )
    for i in range(n):
        r, k = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + k * (w + padding)
        grid[:, top : top + h, left : left + w] = pixels[i]
    return grid


def upscale_factor(width: int, min_width: int = MIN_GRID_WIDTH) -> int:
    """The smallest integer factor that makes `width` at least `min_width` (1 if it already is)."""
    return max(1, math.ceil(min_width / width))


def save_grid(
    images: torch.Tensor,
    path: str | os.PathLike,
    nrow: int | None = None,
    padding: int = 2,
    min_width: int = MIN_GRID_WIDTH,
) -> Path:
    """Write a PNG grid of `images` (see make_grid) atomically.

    A grid narrower than min_width pixels is enlarged by an integer factor with nearest-neighbour sampling,
    so every pixel becomes a k x k block: nothing is interpolated and the values stay exact.
    """
    grid = make_grid(images, nrow=nrow, padding=padding)
    k = upscale_factor(grid.shape[-1], min_width)
    if k > 1:
        grid = grid.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)
    return save_image(grid, path)
