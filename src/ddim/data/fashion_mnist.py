"""Fashion-MNIST from IDX files (Debian's dataset-fashion-mnist or torchvision's raw layout), padded to 32x32."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ddim.data.base import (
    DatasetNotFoundError,
    ImageDataModule,
    TensorImages,
    to_unit_range,
)
from ddim.settings import Count

FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_SIDE = 28


def read_idx_images(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX3 image file (gzipped or not) into uint8 (N, rows, cols), checking magic 2051 and size."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 16:
        raise DatasetNotFoundError(f"{path} is too short to be an IDX image file.")
    magic, n, rows, cols = (int(v) for v in np.frombuffer(raw[:16], dtype=">u4"))
    if magic != 2051:
        raise DatasetNotFoundError(f"{path} is not an IDX image file (magic {magic}, expected 2051).")
    if len(raw) != 16 + n * rows * cols:
        raise DatasetNotFoundError(
            f"{path} is truncated or corrupted: header says {n}x{rows}x{cols} pixels, file holds {len(raw) - 16}."
        )
    if n == 0:
        raise DatasetNotFoundError(
            f"{path} holds no images (its header says 0): the file was cut short or written empty; replace it "
            "with the Fashion-MNIST file (apt-get install dataset-fashion-mnist) or point data.root elsewhere."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows, cols)


class FashionMNISTDataModule(ImageDataModule):
    """Fashion-MNIST 28x28 grey (60,000 train / 10,000 test) read from IDX files, no download needed.

    `root` may hold `{train,t10k}-images-idx3-ubyte[.gz]` directly (the Debian package
    dataset-fashion-mnist installs them in /usr/share/datasets/fashion-mnist), or torchvision's
    `FashionMNIST/raw/` layout. image_size 32 pads 2 background pixels each side (pixels stay exact,
    and 32 suits the U-Net's downsampling); 28 keeps the originals; any other size resizes bilinearly.
    """

    def __init__(self, root: str | Path = FASHION_MNIST_DEBIAN_DIR, image_size: Count = 32, **kwargs) -> None:
        kwargs.setdefault("batch_size", 64)
        kwargs.setdefault("num_workers", 0)
        super().__init__(**kwargs)
        self.root = str(root)
        self.image_size = int(image_size)
        self.save_hyperparameters()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (1, self.image_size, self.image_size)

    def _file(self, split: str) -> Path:
        stem = f"{split}-images-idx3-ubyte"
        base = Path(self.root)
        for folder in (base, base / "FashionMNIST" / "raw", base / "raw"):
            for name in (stem + ".gz", stem):
                if (folder / name).is_file():
                    return folder / name
        raise DatasetNotFoundError(
            f"Fashion-MNIST file {stem}[.gz] not found under data.root={self.root} "
            f"({os.path.abspath(self.root)}, also looked in FashionMNIST/raw/ and raw/). Install it with "
            f"`apt-get install dataset-fashion-mnist` (files land in {FASHION_MNIST_DEBIAN_DIR}) or set "
            "data.root to a folder holding {train,t10k}-images-idx3-ubyte[.gz]."
        )

    def _build(self, train: bool) -> Dataset:
        path = self._file("train" if train else "t10k")
        images = read_idx_images(path)
        if images.shape[1:] != (FASHION_MNIST_SIDE, FASHION_MNIST_SIDE):
            rows, cols = images.shape[1:]
            raise DatasetNotFoundError(
                f"{path} holds {rows}x{cols} images; Fashion-MNIST's are {FASHION_MNIST_SIDE}x{FASHION_MNIST_SIDE}: "
                "point data.root at the Fashion-MNIST files (or train on other images with data=image_folder)."
            )
        x = torch.from_numpy(images.copy())[:, None]
        size = x.shape[-1]
        if self.image_size == size:
            return TensorImages(x)
        if self.image_size > size and (self.image_size - size) % 2 == 0:
            p = (self.image_size - size) // 2
            return TensorImages(F.pad(x, (p, p, p, p), value=0))
        y = F.interpolate(to_unit_range(x), size=(self.image_size,) * 2, mode="bilinear", antialias=True)
        return TensorImages(y.clamp(-1.0, 1.0))
