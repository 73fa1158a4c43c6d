"""scikit-learn's 8x8 digits (offline), bilinear-upsampled."""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ddim.data.base import (
    DataConfigError,
    ImageDataModule,
    TensorImages,
)
from ddim.settings import Count, Range


class DigitsDataModule(ImageDataModule):
    """scikit-learn's 1,797 8x8 digits (values 0..16), one channel, bilinear-resized to `image_size`.

    Pixels map v -> v / 8 - 1 (0 -> -1, 16 -> 1), rounded to the 256 levels of 8-bit images. The split is fixed: the last `num_test` (297) images
    are the test set, the first 1,500 the training set. Ships with scikit-learn, so it works offline.
    Flips default to off here: mirrored digits (2, 3, 7, ...) are not digits.
    """

    def __init__(
        self, image_size: Count = 16, num_test: Annotated[int, Range(ge=1, le=1796)] = 297, **kwargs
    ) -> None:
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
            # 8-bit levels like every other image set: the likelihood (nll, vlb loss) is of 256 pixel levels.
            self._images = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round() / 127.5 - 1.0
        return self._images

    def _build(self, train: bool) -> Dataset:
        x = self._all()
        return TensorImages(x[: -self.num_test] if train else x[-self.num_test :])
