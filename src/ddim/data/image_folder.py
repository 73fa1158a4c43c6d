"""Any folder of images: recursive, RGB, centre square crop, resized."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from ddim.data.base import (
    DataConfigError,
    DatasetNotFoundError,
    ImageDataModule,
    ImageFiles,
    resize,
)
from ddim.data.image_check import check_images
from ddim.settings import Count, NonNegativeInt

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _center_crop_resize(img: Image.Image, image_size: int) -> Image.Image:
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return resize(img.crop((left, top, left + side, top + side)), image_size)


class ImageFolderDataModule(ImageDataModule):
    """Every png/jpg/jpeg/bmp/webp under `root` (recursive, sorted), RGB, centre square crop, resized.

    Test images come from `test_root` if given, else the last `num_test` sorted files are held out of
    training, else (num_test=0) the training files themselves serve as the (unflipped) test set.
    """

    def __init__(
        self,
        root: str | Path = "data/images",
        image_size: Count = 64,
        test_root: str | Path | None = None,
        num_test: NonNegativeInt = 0,
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
        check_images(paths)
        return paths

    def _build(self, train: bool) -> Dataset:
        transform = partial(_center_crop_resize, image_size=self.image_size)
        if not train and self.test_root is not None:
            return ImageFiles(self._list(self.test_root), transform)
        paths = self._list(self.root)
        if self.test_root is None and self.num_test > 0:
            if self.num_test >= len(paths):
                raise DataConfigError(
                    f"data.num_test={self.num_test} holds out all {len(paths)} images under {self.root}: "
                    "use a smaller num_test or set data.test_root."
                )
            paths = paths[: -self.num_test] if train else paths[-self.num_test :]
        return ImageFiles(paths, transform)
