"""Reference statistics cached with their features (KID, as the training FID monitor keeps them) serve a later
FID-only evaluation of the same data set: no second pass over the training images."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from ddim.metrics.reference import reference_statistics


class TrainSet:
    """A data module's surface that reference_statistics reads: train_set of float images in [-1, 1]."""

    def __init__(self) -> None:
        images = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
        self.train_set = TensorDataset(images)


def test_statistics_with_features_serve_fid_alone(tmp_path, tiny_extractor):
    data_cfg = {"_target_": "ddim.data.digits.DigitsDataModule", "image_size": 8}
    common = dict(datamodule=TrainSet(), data_cfg=data_cfg, batch_size=4)
    with_features, path = reference_statistics("data", tiny_extractor, "tiny", tmp_path, "feat",
                                               keep_features=True, **common)  # fmt: skip
    assert path.endswith("-features.npz") and with_features.features.shape == (12, 6)

    def refuse(*args, **kwargs):
        raise AssertionError("the cached statistics were computed again")

    tiny_extractor.forward = refuse
    fid_only, again = reference_statistics("data", tiny_extractor, "tiny", tmp_path, "feat", **common)
    assert again == path and fid_only.features is None
    assert torch.equal(fid_only.mu, with_features.mu) and torch.equal(fid_only.sigma, with_features.sigma)
