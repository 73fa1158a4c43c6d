"""LSUN scene categories (church_outdoor, bedroom, ...) at 256x256, from folders of exported images, with the
crop of the DDIM code (default) or of DDPM's own data files.

LSUN is distributed as LMDB databases; export a category's images to folders first, e.g. with the LSUN
repository's `python data.py export church_outdoor_train_lmdb --out_dir <root>/church_outdoor_train` (and
`church_outdoor_val_lmdb` to <root>/church_outdoor_val). Train = <root>/<category>_train, test =
<root>/<category>_val (300 images per category); files are found recursively (.webp, .jpg, .png, ...).

crop="ddim" (ermongroup/ddim datasets/__init__.py: Resize(image_size) then CenterCrop(image_size)): the short
side is resized to image_size (PIL bilinear; the long side to int(image_size * long / short)), then the centre
image_size square is cut at offset round((side - image_size) / 2).
crop="ddpm" (DDPM's TFRecords, made by StyleGAN's dataset_tool.py create_lsun): the centre square of the short
side is cut at offset (side - short) // 2, then resized to image_size with PIL's antialiased Lanczos filter.
LSUN's images have a short side of 256 already, so at 256 both are a centre crop, one pixel apart where the
two sides differ by an odd number.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Literal

from PIL import Image
from torch.utils.data import Dataset

from ddim.data.base import DatasetNotFoundError, ImageDataModule, ImageFiles
from ddim.data.image_check import check_images
from ddim.data.image_folder import IMAGE_EXTENSIONS
from ddim.settings import Count

CROPS = ("ddim", "ddpm")


def ddim_crop(img: Image.Image, image_size: int) -> Image.Image:
    """torchvision's Resize(image_size) then CenterCrop(image_size) on a PIL image, as the DDIM code reads LSUN."""
    w, h = img.size
    short, long = min(w, h), max(w, h)
    new_long = int(image_size * long / short)
    size = (image_size, new_long) if w <= h else (new_long, image_size)
    if img.size != size:
        img = img.resize(size, Image.BILINEAR)
    w, h = img.size
    top, left = int(round((h - image_size) / 2.0)), int(round((w - image_size) / 2.0))
    return img.crop((left, top, left + image_size, top + image_size))


def ddpm_crop(img: Image.Image, image_size: int) -> Image.Image:
    """The centre square of the short side, then a Lanczos resize: DDPM's LSUN TFRecords (StyleGAN's tool)."""
    w, h = img.size
    side = min(w, h)
    top, left = (h - side) // 2, (w - side) // 2
    img = img.crop((left, top, left + side, top + side))
    return (
        img if img.size == (image_size, image_size) else img.resize((image_size, image_size), Image.LANCZOS)
    )


def lsun_transform(crop: str, image_size: int) -> Callable[[Image.Image], Image.Image]:
    """The crop as a picklable partial (DataLoader workers are spawned)."""
    return partial(ddim_crop if crop == "ddim" else ddpm_crop, image_size=image_size)


class LSUNDataModule(ImageDataModule):
    """One LSUN category from <root>/<category>_train (training) and <root>/<category>_val (test), RGB,
    cropped as `crop` says (see the module docstring), image_size x image_size."""

    def __init__(
        self,
        root: str | Path = "data/lsun",
        category: str = "church_outdoor",
        image_size: Count = 256,
        crop: Literal[CROPS] = "ddim",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root = str(root)
        self.category = str(category)
        self.image_size = int(image_size)
        self.crop = str(crop)
        self.save_hyperparameters()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def _files(self, split: str) -> list[Path]:
        folder = Path(self.root) / f"{self.category}_{split}"
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not paths:
            raise DatasetNotFoundError(
                f"LSUN {self.category} {split} images not found in {os.path.abspath(folder)}: export the LMDB "
                f"database there (LSUN's `python data.py export {self.category}_{split}_lmdb --out_dir {folder}`) "
                "or point data.root at the folder that holds <category>_train and <category>_val."
            )
        check_images(paths)
        return paths

    def _build(self, train: bool) -> Dataset:
        return ImageFiles(
            self._files("train" if train else "val"), lsun_transform(self.crop, self.image_size)
        )
