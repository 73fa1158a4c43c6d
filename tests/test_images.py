"""Labelled figure grids: the grid is drawn unchanged, the labels land over their own column / row, small
images are enlarged until their labels fit, and the raw grid is kept as a second file."""

import numpy as np
import pytest
import torch
from PIL import Image

from ddim.images import (
    LABEL_MARGIN,
    label_font,
    labeled_grid,
    make_grid,
    raw_grid_path,
    save_grid,
    save_labeled_grid,
    upscale_factor,
)

ROWS, COLS = 3, 4
ROW_LABELS = ["first", "second", "third"]
COL_LABELS = ["S=10", "S=20", "S=50", "S=100"]


def images(c: int = 1, size: int = 8) -> torch.Tensor:
    return torch.rand(ROWS, COLS, c, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def ink(pixels: np.ndarray) -> np.ndarray:
    """Where label text is: pixels darker than the white background (channels collapsed)."""
    grey = pixels if pixels.ndim == 2 else pixels.min(axis=2)
    return grey < 200


def test_the_grid_is_drawn_unchanged_below_and_right_of_the_labels():
    x = images()
    figure = labeled_grid(x, ROW_LABELS, COL_LABELS, "consistency: one x_T per row")
    left, top, right, bottom = figure.grid_box
    k = figure.scale
    raw = make_grid(x)[0].numpy()
    assert (right - left, bottom - top) == (k * raw.shape[1], k * raw.shape[0])
    pixels = np.asarray(figure.image)
    assert np.array_equal(pixels[top:bottom, left:right], np.kron(raw, np.ones((k, k), dtype=np.uint8)))
    assert np.array_equal(np.asarray(figure.grid), pixels[top:bottom, left:right])
    assert figure.image.size == (right, bottom)  # the title is narrower than the grid here
    # The bands hold ink: title and column labels above, row labels to the left; white elsewhere.
    assert ink(pixels[:top]).any() and ink(pixels[top:, :left]).any()
    assert pixels[:top].max() == 255 and pixels[top:, :left].max() == 255


def test_no_labels_is_the_plain_upscaled_grid(tmp_path):
    x = images(c=3, size=6)
    figure = labeled_grid(x)
    assert figure.grid_box == (0, 0, *figure.image.size)
    plain = np.asarray(Image.open(save_grid(x, tmp_path / "plain.png")))
    assert figure.scale == upscale_factor(COLS * 8 + 2) and np.array_equal(np.asarray(figure.image), plain)


def test_each_label_sits_over_its_own_column_and_row():
    x = images()
    figure = labeled_grid(x, ROW_LABELS, COL_LABELS)
    left, top, _, _ = figure.grid_box
    k, pitch = figure.scale, figure.scale * (8 + 2)
    pixels = np.asarray(figure.image)
    columns = ink(pixels[:top, left:]).any(axis=0)  # which x positions of the column band hold ink
    for j, text in enumerate(COL_LABELS):
        span = slice(j * pitch, (j + 1) * pitch + 2 * k)
        assert columns[span].any(), text
        width = label_font().getbbox(text)[2]
        assert width + LABEL_MARGIN <= pitch  # small 8x8 tiles were enlarged until the label fits
    rows = ink(pixels[top:, :left]).any(axis=1)
    for i, text in enumerate(ROW_LABELS):
        assert rows[i * pitch : (i + 1) * pitch + 2 * k].any(), text
    # A text wider than the grid widens the figure and leaves the grid where it was.
    wide = labeled_grid(x, ROW_LABELS, COL_LABELS, "a very long title " * 10)
    titled = labeled_grid(x, ROW_LABELS, COL_LABELS, "short")
    assert wide.grid_box == titled.grid_box and wide.image.size[0] > wide.grid_box[2]
    assert titled.grid_box[0] == left and titled.grid_box[1] > top  # a title line above the column labels


def test_labels_make_small_images_larger_until_they_fit():
    x = torch.zeros(1, 12, 1, 8, 8)  # 12 columns of 8x8: save_grid's factor alone gives 50-pixel columns
    long = [f"lambda=0.{i} (rec.)" for i in range(12)]
    base = labeled_grid(x).scale
    wide = labeled_grid(x, None, long)
    assert wide.scale > base
    assert label_font().getbbox(long[0])[2] + LABEL_MARGIN <= wide.scale * (8 + 2)


def test_save_writes_the_labelled_figure_and_the_raw_grid(tmp_path):
    x = images(c=3)
    path = tmp_path / "figs" / "consistency.png"
    raw = raw_grid_path(path)
    assert raw == tmp_path / "figs" / "consistency_raw.png"
    assert save_labeled_grid(x, path, ROW_LABELS, COL_LABELS, "title", raw_path=raw) == path
    labeled, grid = Image.open(path), Image.open(raw)
    assert labeled.mode == grid.mode == "RGB"
    figure = labeled_grid(x, ROW_LABELS, COL_LABELS, "title")
    assert np.array_equal(np.asarray(labeled), np.asarray(figure.image))
    assert np.array_equal(np.asarray(grid), np.asarray(figure.grid))
    assert sorted(p.name for p in path.parent.iterdir()) == ["consistency.png", "consistency_raw.png"]


def test_mismatched_labels_are_refused():
    with pytest.raises(ValueError, match="row_labels: 2 labels for 3 rows"):
        labeled_grid(images(), ROW_LABELS[:2])
    with pytest.raises(ValueError, match="col_labels: 5 labels for 4 cols"):
        labeled_grid(images(), None, [*COL_LABELS, "x"])
    with pytest.raises(ValueError, match="rows, cols, C, H, W"):
        labeled_grid(torch.zeros(4, 1, 8, 8))
