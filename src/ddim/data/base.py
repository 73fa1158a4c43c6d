"""The shared base of every data family: one LightningDataModule that owns the loaders, the dataset wrappers
(tensors in memory, image files through PIL, flips) and the transforms more than one family uses."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from ddim.data.image_check import read_image
from ddim.data.resumable import ResumableLoader
from ddim.errors import DDIMError
from ddim.images import from_pil
from ddim.settings import Count, NonNegativeInt


class DatasetNotFoundError(DDIMError, FileNotFoundError):
    """Data files are missing or unreadable; the message says where to put them or how to fetch them."""


class DataConfigError(DDIMError, ValueError):
    """A data setting is out of range; the message names the setting."""


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0..255 -> float32 in [-1, 1] (0 -> -1, 255 -> 1 exactly)."""
    return x.to(torch.float32) / 127.5 - 1.0


# ----------------------------------------------------------------------------------------------------------
# Datasets (items are float tensors (C, H, W) in [-1, 1])


class TensorImages(Dataset):
    """Images held in memory: uint8 (converted per item) or float already in [-1, 1]."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        x = self.images[index]
        return to_unit_range(x) if x.dtype == torch.uint8 else x


class ImageFiles(Dataset):
    """Image files decoded with PIL, converted to RGB and passed through a PIL transform."""

    def __init__(self, paths: Sequence[Path], transform: Callable[[Image.Image], Image.Image]) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return to_unit_range(from_pil(self.transform(read_image(self.paths[index]))))


def resize(img: Image.Image, image_size: int) -> Image.Image:
    """PIL bilinear resize to image_size x image_size (a no-op at that size already)."""
    # PIL bilinear scales its filter with the shrink factor (antialiasing); torchvision's Resize calls
    # exactly this on PIL images, which is what the DDIM code feeds it.
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.BILINEAR)
    return img


def _first(dataset: Dataset, n: int | None) -> Dataset:
    if n is None or n >= len(dataset):
        return dataset
    if n <= 0:
        raise DataConfigError(f"A dataset limit must be a positive number of images or null, got {n}.")
    return Subset(dataset, range(n))


# ----------------------------------------------------------------------------------------------------------
# Base class: loaders are written once here.


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, as torch's DataLoader counts)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class ImageDataModule(pl.LightningDataModule):
    """Shared loaders for unconditional image data in [-1, 1].

    Args:
        batch_size: images per training batch (also used for val/test).
        num_workers: DataLoader worker processes, at most one per CPU this process may use (more only
            compete for the same cores, and torch warns about them).
        flip: random horizontal flips (p=0.5) in training only; val/test are never flipped.
        limit: use only the first N training images (quick runs and tests); null = all.
        val_size: the validation loader holds the first `val_size` test images (no flips).
        test_limit: use only the first N test images; null = all.
        pin_memory: null = pin when CUDA is available.
        persistent_workers: null = keep workers alive between epochs when num_workers > 0.
    """

    def __init__(
        self,
        batch_size: Count = 128,
        num_workers: NonNegativeInt = 4,
        flip: bool = True,
        limit: Count | None = None,
        val_size: NonNegativeInt = 256,
        test_limit: Count | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool | None = None,
    ) -> None:
        super().__init__()
        if batch_size <= 0:
            raise DataConfigError(f"data.batch_size must be positive, got {batch_size}.")
        if num_workers < 0:
            raise DataConfigError(f"data.num_workers must be >= 0, got {num_workers}.")
        self.batch_size = int(batch_size)
        self.num_workers = min(int(num_workers), available_cpus())
        self.flip = bool(flip)
        self.limit = limit
        self.val_size = int(val_size)
        self.test_limit = test_limit
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        # DataLoader rejects persistent workers without workers, so a config default of true stays valid.
        wanted = self.num_workers > 0 if persistent_workers is None else bool(persistent_workers)
        self.persistent_workers = wanted and self.num_workers > 0
        self._train: Dataset | None = None
        self._test: Dataset | None = None

    # Subclasses implement these two plus `image_shape`.
    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image, known without reading data so models can be built first."""
        raise NotImplementedError

    def _build(self, train: bool) -> Dataset:
        """The split's dataset (items float (C, H, W) in [-1, 1], unflipped, full length)."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self._train is None and stage in (None, "fit"):
            self._train = _first(self._build(train=True), self.limit)
        if self._test is None:
            self._test = _first(self._build(train=False), self.test_limit)

    @property
    def train_set(self) -> Dataset:
        """Training images, limited, before flips."""
        if self._train is None:
            self.setup("fit")
        assert self._train is not None
        return self._train

    @property
    def test_set(self) -> Dataset:
        """Test images in their fixed order (the reconstruction table uses them)."""
        if self._test is None:
            self.setup("test")
        assert self._test is not None
        return self._test

    def _loader(self, dataset: Dataset, shuffle: bool, drop_last: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        # Order and flips come from (seed, epoch), the same on every rank and after a resume mid-epoch.
        return ResumableLoader(
            self.train_set,
            batch_size=self.batch_size,
            flip=self.flip,
            # Full batches keep the loss scale constant, unless the (limited) set is smaller than one batch.
            drop_last=len(self.train_set) >= self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader(_first(self.test_set, self.val_size), shuffle=False, drop_last=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False, drop_last=False)
