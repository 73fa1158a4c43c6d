"""Turning model-space images ([-1, 1] floats) into uint8 pixels and PNG grids.

The quantisation lives here once so that sample grids, written sample files and metrics all see the same pixels.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import torch
from PIL import Image


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """round((clamp(x, -1, 1) + 1) * 127.5) as uint8, the same map for generated and real images."""
    if x.dtype == torch.uint8:
        return x
    x = x.detach()
    if x.dtype != torch.float64:
        x = x.to(torch.float32)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


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


def save_grid(
    images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None, padding: int = 2
) -> Path:
    """Write a PNG grid of `images` (see make_grid) atomically: a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = make_grid(images, nrow=nrow, padding=padding)
    array = grid.permute(1, 2, 0).numpy()
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
