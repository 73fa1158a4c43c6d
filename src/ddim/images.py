"""Images: the one conversion between model-space tensors ([-1, 1] floats), uint8 tensors and PIL images,
image files written atomically, and grids: many images laid out as one PNG a person can look at, with the row
and column labels and the title that say what the figure shows."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

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


# ----------------------------------------------------------------------------------------------------------
# Labelled grids: the figure a reader can interpret without the metrics.json beside it

LABEL_FONT_SIZE = 12  # pixels; PIL's built-in font (no font file needed), ASCII only
LABEL_MARGIN = 4  # pixels around every label and between the bands


@dataclass(frozen=True)
class LabeledGrid:
    """A labelled grid: `image` holds the upscaled grid unchanged in `grid_box` (left, top, right, bottom),
    the title and column labels in the band above it and the row labels in the band to its left."""

    image: Image.Image
    grid_box: tuple[int, int, int, int]
    scale: int

    @property
    def grid(self) -> Image.Image:
        """The grid alone, without labels (what save_grid would draw at this scale)."""
        return self.image.crop(self.grid_box)


def label_font(size: int = LABEL_FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's built-in font: scalable with FreeType (Pillow >= 10.1), else its fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no size argument
        return ImageFont.load_default()


def _ink(font: Any, text: str) -> tuple[int, int, int, int]:
    return tuple(int(v) for v in font.getbbox(text))  # type: ignore[return-value]


def _label_scale(
    grid_width: int, tile: tuple[int, int], padding: int, col_widths: list[int], line: int, min_width: int
) -> int:
    """The upscale factor: save_grid's, raised so every column label fits its column and every row label
    its row (small images, such as 8x8 digits, would otherwise be narrower than their labels)."""
    h, w = tile
    k = upscale_factor(grid_width, min_width)
    if col_widths:
        k = max(k, math.ceil((max(col_widths) + LABEL_MARGIN) / (w + padding)))
    return max(k, math.ceil((line + 2) / (h + padding)))


def labeled_grid(
    images: torch.Tensor,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    title: str | None = None,
    padding: int = 2,
    min_width: int = MIN_GRID_WIDTH,
) -> LabeledGrid:
    """A (rows, cols, C, H, W) grid laid out as make_grid does, upscaled by whole pixels like save_grid, with
    a title line and column labels above it and row labels to its left, in black on white.

    Geometry: the grid (make_grid's pixels, each a k x k block) sits unchanged in `grid_box`; column label j
    is centred over column j, row label i is right-aligned before row i and centred on it. k is save_grid's
    factor, raised where a label would be wider than its column (or taller than its row).
    """
    if images.ndim != 5:
        raise ValueError(f"labeled_grid takes (rows, cols, C, H, W) images, got {tuple(images.shape)}.")
    rows, cols, _, h, w = images.shape
    for name, labels, n in (("row_labels", row_labels, rows), ("col_labels", col_labels, cols)):
        if labels is not None and len(labels) != n:
            raise ValueError(f"{name}: {len(labels)} labels for {n} {name.split('_')[0]}s.")
    font = label_font()
    line = _ink(font, "Ag|_()=")[3]
    col_widths = [_ink(font, s)[2] for s in col_labels or []]
    grid = make_grid(images, padding=padding)
    k = _label_scale(grid.shape[-1], (h, w), padding, col_widths, line, min_width)
    upscaled = to_pil(grid.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1))
    left = max((_ink(font, s)[2] for s in row_labels), default=0) + 2 * LABEL_MARGIN if row_labels else 0
    bands = [text for text in (title, col_labels) if text]
    top = len(bands) * (line + LABEL_MARGIN) + LABEL_MARGIN if bands else 0
    title_width = _ink(font, title)[2] + 2 * LABEL_MARGIN if title else 0
    size = (max(left + upscaled.width, title_width), top + upscaled.height)
    canvas = Image.new(upscaled.mode, size, 255 if upscaled.mode == "L" else (255, 255, 255))
    canvas.paste(upscaled, (left, top))
    draw, ink = ImageDraw.Draw(canvas), 0 if upscaled.mode == "L" else (0, 0, 0)
    if title:
        draw.text((LABEL_MARGIN, LABEL_MARGIN), title, fill=ink, font=font)
    for j, (text, width) in enumerate(zip(col_labels or [], col_widths, strict=True)):
        centre = left + k * (padding + j * (w + padding)) + k * w // 2
        draw.text((centre - width // 2, top - line - LABEL_MARGIN), text, fill=ink, font=font)
    for i, text in enumerate(row_labels or []):
        centre = top + k * (padding + i * (h + padding)) + k * h // 2
        x = left - LABEL_MARGIN - _ink(font, text)[2]
        draw.text((x, centre - line // 2), text, fill=ink, font=font)
    return LabeledGrid(canvas, (left, top, left + upscaled.width, top + upscaled.height), k)


def save_labeled_grid(
    images: torch.Tensor,
    path: str | os.PathLike,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    title: str | None = None,
    raw_path: str | os.PathLike | None = None,
    padding: int = 2,
    min_width: int = MIN_GRID_WIDTH,
) -> Path:
    """Write labeled_grid(...) to `path` (atomically) and, with `raw_path`, the same grid without labels
    (the same scale and pixels, for papers)."""
    figure = labeled_grid(images, row_labels, col_labels, title, padding, min_width)
    if raw_path is not None:
        save_image(figure.grid, raw_path)
    return save_image(figure.image, path)


def raw_grid_path(path: str | os.PathLike) -> Path:
    """Where a labelled figure keeps its unlabelled grid: <name>_raw.png beside <name>.png."""
    path = Path(path)
    return path.with_name(f"{path.stem}_raw{path.suffix}")
