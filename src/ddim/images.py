"""Images: the one conversion between model-space tensors ([-1, 1] floats), uint8 tensors and PIL images,
image files written atomically, and grids: many images laid out as one PNG a person can look at."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ddim.io import atomic_write


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """round((clamp(x, -1, 1) + 1) * 127.5) as uint8, the same map for generated and real images.

    The quantisation lives here once so that sample grids, written sample files and metrics see the same pixels.
    """
    if x.dtype == torch.uint8:
        return x
    x = x.detach()
    if x.dtype != torch.float64:
        x = x.to(torch.float32)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_pil(image: torch.Tensor) -> Image.Image:
    """uint8 (C, H, W) with C = 1 (grey, mode L) or 3 (RGB) -> PIL image."""
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"Expected a uint8 image (1|3, H, W), got {image.dtype} {tuple(image.shape)}.")
    array = image.detach().cpu().permute(1, 2, 0).numpy()
    if array.shape[-1] == 1:
        return Image.fromarray(np.ascontiguousarray(array[..., 0]), mode="L")
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def from_pil(image: Image.Image) -> torch.Tensor:
    """PIL image -> uint8 tensor (C, H, W), without a float round trip; grey gives C = 1."""
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """An image file as a uint8 (C, H, W) tensor, channels as stored (grey stays 1 channel)."""
    with Image.open(path) as image:
        return from_pil(image)


def save_image(image: torch.Tensor | Image.Image, path: str | os.PathLike, **pil_options: Any) -> Path:
    """A uint8 (C, H, W) tensor or a PIL image as an image file (format from the suffix, e.g. .png)."""
    if isinstance(image, torch.Tensor):
        image = to_pil(image)
    path = Path(path)
    with atomic_write(path) as f:
        image.save(f, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"), **pil_options)
    return path


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
