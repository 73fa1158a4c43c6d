"""CelebA 64x64 with the DDIM crop and PIL's antialiased bilinear resize (the reference code's pixels)."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from ddim.data.base import (
    DatasetNotFoundError,
    ImageDataModule,
    ImageFiles,
    resize,
)
from ddim.settings import Count

# DDIM's CelebA crop (ermongroup/ddim datasets/__init__.py: cx=89, cy=121, Crop(x1=cy-64, x2=cy+64,
# y1=cx-64, y2=cx+64) calls F.crop(img, top=57, left=25, height=128, width=128)) on the 178x218 aligned image.
CELEBA_CROP = {"top": 57, "left": 25, "height": 128, "width": 128}


def celeba_crop(img: Image.Image) -> Image.Image:
    """DDIM's 128x128 face crop of a 178x218 aligned CelebA image (top-left at row 57, column 25)."""
    c = CELEBA_CROP
    return img.crop((c["left"], c["top"], c["left"] + c["width"], c["top"] + c["height"]))


def _celeba_crop_resize(img: Image.Image, image_size: int) -> Image.Image:
    return resize(celeba_crop(img), image_size)


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

    def __init__(
        self, root: str | Path = "data", download: bool = False, image_size: Count = 64, **kwargs
    ) -> None:
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
        return ImageFiles([images / n for n in names], celeba_transform(self.image_size))
