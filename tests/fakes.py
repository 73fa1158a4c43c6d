"""Tiny data sets written in the on-disk formats the real loaders read (no downloads in tests)."""

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def write_fake_cifar10(root: Path, n_per_batch: int = 4) -> dict[str, np.ndarray]:
    """torchvision's cifar-10-batches-py layout: latin1 pickles with 'data' (N, 3072) uint8 rows (R, G, B planes)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        arrays[name] = data
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": [0] * n_per_batch, "batch_label": name}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return arrays


def coordinate_image(index: int = 0) -> Image.Image:
    """178x218 (w x h) RGB image with R = column, G = row, B = index, so any crop can be read off its pixels."""
    cols, rows = np.meshgrid(np.arange(178), np.arange(218))
    arr = np.stack([cols, rows, np.full_like(cols, index)], axis=-1).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def write_fake_celeba(base: Path, partitions: list[int]) -> None:
    images = base / "img_align_celeba"
    images.mkdir(parents=True)
    lines = []
    for i, part in enumerate(partitions):
        name = f"{i + 1:06d}.jpg"
        coordinate_image(i).save(images / name, format="PNG")  # lossless content, CelebA's file names
        lines.append(f"{name} {part}\n")
    (base / "list_eval_partition.txt").write_text("".join(lines))
