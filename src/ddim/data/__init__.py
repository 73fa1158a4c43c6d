"""LightningDataModules for every data family: batches are float tensors (B, C, H, W) in [-1, 1], no labels.

One base class owns the loaders (shuffling, flips, limits, worker settings); each family only says how to
build its train and test datasets and what shape its images have. Small sets are decoded once into tensors,
so loading costs nothing per step; file-backed sets (CelebA, image folders) decode with PIL per item, the
same path the DDIM reference code takes, so the pixels match it.

A new data family is one module here (a subclass of ImageDataModule with `image_shape` and `_build`) plus one
file in conf/data/ that names it as `_target_`; the loader settings come from conf/data/loader/default.yaml.
"""

from ddim.data.base import DataConfigError, DatasetNotFoundError, ImageDataModule, to_unit_range

__all__ = ["DataConfigError", "DatasetNotFoundError", "ImageDataModule", "to_unit_range"]
