"""CIFAR10 32x32 via torchvision's files, decoded once into a uint8 tensor."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ddim.data.base import (
    DatasetNotFoundError,
    ImageDataModule,
    TensorImages,
)


class CIFAR10DataModule(ImageDataModule):
    """CIFAR10 32x32 via torchvision (50,000 train / 10,000 test), read from `<root>/cifar-10-batches-py/`."""

    def __init__(self, root: str | Path = "data/cifar10", download: bool = False, **kwargs) -> None:
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
        return TensorImages(torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous())
