"""LightningDataModules for every data family: batches are float tensors (B, C, H, W) in [-1, 1], no labels.

One base class owns the loaders (shuffling, flips, limits, worker settings); each family only says how to
build its train and test datasets and what shape its images have. Small sets are decoded once into tensors,
so loading costs nothing per step; file-backed sets (CelebA, image folders) decode with PIL per item, the
same path the DDIM reference code takes, so the pixels match it.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from ddim.errors import DDIMError

__all__ = [
    "CELEBA_CROP",
    "CIFAR10DataModule",
    "CelebA64DataModule",
    "DataConfigError",
    "DatasetNotFoundError",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "celeba_crop",
    "celeba_transform",
    "read_idx_images",
    "to_unit_range",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"

# DDIM's CelebA crop (ermongroup/ddim datasets/__init__.py: cx=89, cy=121, Crop(x1=cy-64, x2=cy+64,
# y1=cx-64, y2=cx+64) calls F.crop(img, top=57, left=25, height=128, width=128)) on the 178x218 aligned image.
CELEBA_CROP = {"top": 57, "left": 25, "height": 128, "width": 128}


class DatasetNotFoundError(DDIMError, FileNotFoundError):
    """Data files are missing or unreadable; the message says where to put them or how to fetch them."""


class DataConfigError(DDIMError, ValueError):
    """A data setting is out of range; the message names the setting."""


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0..255 -> float32 in [-1, 1] (0 -> -1, 255 -> 1 exactly)."""
    return x.to(torch.float32) / 127.5 - 1.0


def _pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL image -> uint8 tensor (C, H, W) without a float round trip."""
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


# ----------------------------------------------------------------------------------------------------------
# Datasets (items are float tensors (C, H, W) in [-1, 1])


class _TensorImages(Dataset):
    """Images held in memory: uint8 (converted per item) or float already in [-1, 1]."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        x = self.images[index]
        return to_unit_range(x) if x.dtype == torch.uint8 else x


class _ImageFiles(Dataset):
    """Image files decoded with PIL, converted to RGB and passed through a PIL transform."""

    def __init__(self, paths: Sequence[Path], transform: Callable[[Image.Image], Image.Image]) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.paths[index]) as img:
            img = self.transform(img.convert("RGB"))
        return to_unit_range(_pil_to_tensor(img))


class _RandomHFlip(Dataset):
    """Mirror each item with probability p; the draw uses torch's global RNG, which Lightning seeds per worker."""

    def __init__(self, dataset: Dataset, p: float = 0.5) -> None:
        self.dataset = dataset
        self.p = p

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        x = self.dataset[index]
        return x.flip(-1) if torch.rand(()) < self.p else x


def _first(dataset: Dataset, n: int | None) -> Dataset:
    if n is None or n >= len(dataset):
        return dataset
    if n <= 0:
        raise DataConfigError(f"A dataset limit must be a positive number of images or null, got {n}.")
    return Subset(dataset, range(n))


# ----------------------------------------------------------------------------------------------------------
# Base class: loaders are written once here.


class ImageDataModule(pl.LightningDataModule):
    """Shared loaders for unconditional image data in [-1, 1].

    Args:
        batch_size: images per training batch (also used for val/test).
        num_workers: DataLoader worker processes.
        flip: random horizontal flips (p=0.5) in training only; val/test are never flipped.
        limit: use only the first N training images (quick runs and tests); null = all.
        val_size: the validation loader holds the first `val_size` test images (no flips).
        test_limit: use only the first N test images; null = all.
        pin_memory: null = pin when CUDA is available.
        persistent_workers: null = keep workers alive between epochs when num_workers > 0.
    """

    def __init__(
        self,
        batch_size: int = 128,
        num_workers: int = 4,
        flip: bool = True,
        limit: int | None = None,
        val_size: int = 256,
        test_limit: int | None = None,
        pin_memory: bool | None = None,
        persistent_workers: bool | None = None,
    ) -> None:
        super().__init__()
        if batch_size <= 0:
            raise DataConfigError(f"data.batch_size must be positive, got {batch_size}.")
        if num_workers < 0:
            raise DataConfigError(f"data.num_workers must be >= 0, got {num_workers}.")
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
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
        dataset = _RandomHFlip(self.train_set) if self.flip else self.train_set
        # Full batches keep the loss scale constant, unless the (limited) set is smaller than one batch.
        return self._loader(dataset, shuffle=True, drop_last=len(dataset) >= self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(_first(self.test_set, self.val_size), shuffle=False, drop_last=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False, drop_last=False)


# ----------------------------------------------------------------------------------------------------------
# CIFAR10


class CIFAR10DataModule(ImageDataModule):
    """CIFAR10 32x32 via torchvision (50,000 train / 10,000 test), read from `<root>/cifar-10-batches-py/`."""

    def __init__(self, root: str = "data/cifar10", download: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root = str(root)
        self.download = bool(download)
        self.save_hyperparameters()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, 32, 32)

    def _missing_message(self, detail: str) -> str:
        folder = os.path.join(os.path.abspath(self.root), "cifar-10-batches-py")
        return (
            f"CIFAR10 {detail} under data.root={self.root}. torchvision expects the extracted "
            f"cifar-10-python.tar.gz at {folder}/ (data_batch_1..5, test_batch, batches.meta): "
            "download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it into "
            f"{os.path.abspath(self.root)}, point data.root at the folder that holds cifar-10-batches-py, "
            "or set data.download=true on a machine with internet."
        )

    def prepare_data(self) -> None:
        if self.download:
            from torchvision.datasets import CIFAR10

            try:
                CIFAR10(self.root, train=True, download=True)
            except Exception as err:  # network errors come in many types
                raise DatasetNotFoundError(self._missing_message(f"could not be downloaded ({err})")) from err

    def _build(self, train: bool) -> Dataset:
        from torchvision.datasets import CIFAR10

        folder = Path(self.root) / "cifar-10-batches-py"
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise DatasetNotFoundError(self._missing_message(f"files are missing ({', '.join(missing)})"))
        try:
            ds = CIFAR10(self.root, train=train, download=False)
        except RuntimeError as err:
            raise DatasetNotFoundError(self._missing_message(f"files are corrupted ({err})")) from err
        # torchvision keeps the decoded uint8 array (N, 32, 32, 3); indexing it directly skips PIL per item.
        return _TensorImages(torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous())


# ----------------------------------------------------------------------------------------------------------
# CelebA 64x64


def celeba_crop(img: Image.Image) -> Image.Image:
    """DDIM's 128x128 face crop of a 178x218 aligned CelebA image (top-left at row 57, column 25)."""
    c = CELEBA_CROP
    return img.crop((c["left"], c["top"], c["left"] + c["width"], c["top"] + c["height"]))


def _resize(img: Image.Image, image_size: int) -> Image.Image:
    # PIL bilinear scales its filter with the shrink factor (antialiasing); torchvision's Resize calls
    # exactly this on PIL images, which is what the DDIM code feeds it.
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.BILINEAR)
    return img


def _celeba_crop_resize(img: Image.Image, image_size: int) -> Image.Image:
    return _resize(celeba_crop(img), image_size)


def celeba_transform(image_size: int = 64) -> Callable[[Image.Image], Image.Image]:
    """DDIM crop, then PIL bilinear resize to `image_size` (a partial, so spawned workers can pickle it)."""
    return partial(_celeba_crop_resize, image_size=image_size)


class CelebA64DataModule(ImageDataModule):
    """CelebA with the DDIM crop, resized to `image_size` (64): train = partition 0, test = partition 2.

    Reading needs only `img_align_celeba/` and `list_eval_partition.txt` (unconditional models use no
    attributes), found in `<root>/celeba/` (torchvision's layout) or directly in `<root>/`.
    `download=true` uses torchvision's Google Drive download into `<root>/celeba/`.
    """

    _SPLITS = {"train": "0", "valid": "1", "test": "2"}

    def __init__(self, root: str = "data", download: bool = False, image_size: int = 64, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root = str(root)
        self.download = bool(download)
        self.image_size = int(image_size)
        self.save_hyperparameters()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def _missing_message(self, detail: str) -> str:
        folder = os.path.join(os.path.abspath(self.root), "celeba")
        return (
            f"CelebA {detail} under data.root={self.root}. Put the aligned images and the split file at "
            f"{folder}/img_align_celeba/*.jpg and {folder}/list_eval_partition.txt "
            "(from img_align_celeba.zip and Eval/list_eval_partition.txt of the official CelebA release), "
            "point data.root at the folder that holds them, or set data.download=true on a machine with "
            "internet (torchvision's Google Drive download often hits its quota: then fetch the files by hand)."
        )

    def _folder(self) -> Path:
        for folder in (Path(self.root) / "celeba", Path(self.root)):
            if (folder / "img_align_celeba").is_dir() and (folder / "list_eval_partition.txt").is_file():
                return folder
        raise DatasetNotFoundError(self._missing_message("was not found"))

    def prepare_data(self) -> None:
        if self.download:
            from torchvision.datasets import CelebA

            try:
                CelebA(self.root, split="train", target_type=[], download=True)
            except Exception as err:
                raise DatasetNotFoundError(self._missing_message(f"could not be downloaded ({err})")) from err

    def _build(self, train: bool) -> Dataset:
        folder = self._folder()
        wanted = self._SPLITS["train" if train else "test"]
        names = []
        with open(folder / "list_eval_partition.txt") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[1] == wanted:
                    names.append(parts[0])
        if not names:
            raise DatasetNotFoundError(
                self._missing_message(f"list_eval_partition.txt lists no images of partition {wanted}")
            )
        images = folder / "img_align_celeba"
        if not (images / names[0]).is_file():
            raise DatasetNotFoundError(self._missing_message(f"image {names[0]} is missing from {images}"))
        return _ImageFiles([images / n for n in names], celeba_transform(self.image_size))


# ----------------------------------------------------------------------------------------------------------
# Any folder of images


def _center_crop_resize(img: Image.Image, image_size: int) -> Image.Image:
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return _resize(img.crop((left, top, left + side, top + side)), image_size)


class ImageFolderDataModule(ImageDataModule):
    """Every png/jpg/jpeg/bmp/webp under `root` (recursive, sorted), RGB, centre square crop, resized.

    Test images come from `test_root` if given, else the last `num_test` sorted files are held out of
    training, else (num_test=0) the training files themselves serve as the (unflipped) test set.
    """

    def __init__(
        self,
        root: str = "data/images",
        image_size: int = 64,
        test_root: str | None = None,
        num_test: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root = str(root)
        self.image_size = int(image_size)
        self.test_root = None if test_root is None else str(test_root)
        self.num_test = int(num_test)
        self.save_hyperparameters()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    @staticmethod
    def _list(root: str) -> list[Path]:
        if not Path(root).is_dir():
            raise DatasetNotFoundError(
                f"Image folder data.root={root} ({os.path.abspath(root)}) does not exist: point data.root "
                f"at a folder of images ({', '.join(IMAGE_EXTENSIONS)}; subfolders are searched too)."
            )
        paths = sorted(
            p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        if not paths:
            raise DatasetNotFoundError(
                f"No images ({', '.join(IMAGE_EXTENSIONS)}) found under data.root={root} "
                f"({os.path.abspath(root)}): point data.root at a folder of images."
            )
        return paths

    def _build(self, train: bool) -> Dataset:
        transform = partial(_center_crop_resize, image_size=self.image_size)
        if not train and self.test_root is not None:
            return _ImageFiles(self._list(self.test_root), transform)
        paths = self._list(self.root)
        if self.test_root is None and self.num_test > 0:
            if self.num_test >= len(paths):
                raise DataConfigError(
                    f"data.num_test={self.num_test} holds out all {len(paths)} images under {self.root}: "
                    "use a smaller num_test or set data.test_root."
                )
            paths = paths[: -self.num_test] if train else paths[-self.num_test :]
        return _ImageFiles(paths, transform)


# ----------------------------------------------------------------------------------------------------------
# scikit-learn digits (offline)


class DigitsDataModule(ImageDataModule):
    """scikit-learn's 1,797 8x8 digits (values 0..16), one channel, bilinear-resized to `image_size`.

    Pixels map v -> v / 8 - 1 (0 -> -1, 16 -> 1). The split is fixed: the last `num_test` (297) images
    are the test set, the first 1,500 the training set. Ships with scikit-learn, so it works offline.
    Flips default to off here: mirrored digits (2, 3, 7, ...) are not digits.
    """

    def __init__(self, image_size: int = 16, num_test: int = 297, **kwargs) -> None:
        kwargs.setdefault("batch_size", 64)
        kwargs.setdefault("num_workers", 0)
        kwargs.setdefault("flip", False)
        super().__init__(**kwargs)
        self.image_size = int(image_size)
        self.num_test = int(num_test)
        if not 0 < self.num_test < 1797:
            raise DataConfigError(f"data.num_test must be in 1..1796 for the 1,797 digits, got {num_test}.")
        self._images: torch.Tensor | None = None
        self.save_hyperparameters()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (1, self.image_size, self.image_size)

    def _all(self) -> torch.Tensor:
        if self._images is None:
            from sklearn.datasets import load_digits

            x = torch.from_numpy(load_digits().images).to(torch.float32)[:, None] / 8.0 - 1.0
            if self.image_size != 8:
                x = F.interpolate(
                    x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False, antialias=True
                )
            self._images = x.clamp(-1.0, 1.0)
        return self._images

    def _build(self, train: bool) -> Dataset:
        x = self._all()
        return _TensorImages(x[: -self.num_test] if train else x[-self.num_test :])


# ----------------------------------------------------------------------------------------------------------
# Fashion-MNIST (offline via the Debian package)


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
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows, cols)


class FashionMNISTDataModule(ImageDataModule):
    """Fashion-MNIST 28x28 grey (60,000 train / 10,000 test) read from IDX files, no download needed.

    `root` may hold `{train,t10k}-images-idx3-ubyte[.gz]` directly (the Debian package
    dataset-fashion-mnist installs them in /usr/share/datasets/fashion-mnist), or torchvision's
    `FashionMNIST/raw/` layout. image_size 32 pads 2 background pixels each side (pixels stay exact,
    and 32 suits the U-Net's downsampling); 28 keeps the originals; any other size resizes bilinearly.
    """

    def __init__(self, root: str = FASHION_MNIST_DEBIAN_DIR, image_size: int = 32, **kwargs) -> None:
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
        x = torch.from_numpy(read_idx_images(self._file("train" if train else "t10k")).copy())[:, None]
        size = x.shape[-1]
        if self.image_size == size:
            return _TensorImages(x)
        if self.image_size > size and (self.image_size - size) % 2 == 0:
            p = (self.image_size - size) // 2
            return _TensorImages(F.pad(x, (p, p, p, p), value=0))
        y = F.interpolate(to_unit_range(x), size=(self.image_size,) * 2, mode="bilinear", antialias=True)
        return _TensorImages(y.clamp(-1.0, 1.0))
