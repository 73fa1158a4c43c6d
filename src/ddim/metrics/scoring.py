"""The metric side of an evaluation: feature extractor and reference statistics, prepared (and checked)
before any sample is generated, then applied to the written sample files."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import hydra
import torch

from ddim.errors import DDIMError
from ddim.metrics.cache import guards_cache
from ddim.metrics.fid import FID_LAYER, IS_LAYER, Statistics, compute_metrics, extract_features
from ddim.metrics.inception import (
    WEIGHT_SOURCES,
    InceptionWeights,
    build_inception,
    resolve_inception_weights,
)
from ddim.metrics.reference import reference_statistics
from ddim.metrics.shards import ShardImages
from ddim.settings import Count, NonNegativeInt


@dataclass(frozen=True, kw_only=True)
class Scorer:
    """The feature extractor and reference statistics, ready before any sample is generated."""

    extractor: torch.nn.Module
    extractor_name: str
    fid_layer: str
    reference: Statistics
    reference_desc: str
    isc: bool = False
    kid: bool = False
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    batch_size: int = 100
    num_workers: int = 0
    device: torch.device = torch.device("cpu")

    def score(self, images: ShardImages) -> dict[str, float]:
        feats = extract_features(images, self.extractor, self.batch_size, self.device, self.num_workers)
        return compute_metrics(
            feats,
            self.reference,
            fid_layer=self.fid_layer,
            isc=self.isc,
            kid=self.kid,
            kid_subsets=self.kid_subsets,
            kid_subset_size=self.kid_subset_size,
        )


def metric_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass(frozen=True, kw_only=True)
class FIDSettings:
    """The fid config group (conf/fid/inception.yaml holds the defaults and says what each key does)."""

    weights: Literal[WEIGHT_SOURCES]
    weights_path: str | None
    detector_path: str | None
    download: bool
    cache_dir: str
    reference: str  # "data", "cifar10-train" or a path to an .npz holding mu and sigma
    reference_limit: Count | None
    isc: bool
    kid: bool
    kid_subsets: Count
    kid_subset_size: Count
    batch_size: Count
    num_workers: NonNegativeInt
    device: str
    feature_extractor: Mapping[str, Any] | None


def _extractor(f: FIDSettings, weights: InceptionWeights | None) -> tuple[torch.nn.Module, str, str, str]:
    """(feature extractor, its cache key, its FID layer, its description): a plugged-in one, or Inception."""
    if f.feature_extractor:
        extractor = hydra.utils.instantiate(f.feature_extractor, _convert_="all")
        name = extractor.get_name()
        if f.isc and IS_LAYER not in extractor.get_requested_features_list():
            raise DDIMError(
                f"fid.isc=true but the feature extractor {name} provides no {IS_LAYER!r} features."
            )
        return extractor, name, extractor.get_default_feature_layer_for_metric("fid"), name
    assert weights is not None
    name = "inception-2015-12-05"
    return build_inception(weights, isc=f.isc), name, FID_LAYER, f"{name} ({weights.source})"


@guards_cache  # a cache path under a file, or a read-only cache that must grow: one line, nothing generated
def prepare_scorer(
    f: FIDSettings,
    *,
    is_zero: bool,
    datamodule: Callable[[], Any],
    data_cfg: dict[str, Any] | None,
    data_dir: str | Path,
) -> Scorer | None:
    """Resolve weights on every rank (so each fails fast), build the extractor and statistics on rank 0.

    `datamodule` builds the (shape-checked) data module, needed only for fid.reference=data."""
    dm = datamodule() if f.reference == "data" else None
    weights = None
    if not f.feature_extractor:
        weights = resolve_inception_weights(
            f.weights, f.weights_path, f.detector_path, f.cache_dir, f.download
        )
        if f.isc and not weights.has_logits:
            build_inception(weights, isc=True)  # raises the "no logits" message
    if not is_zero:
        return None
    device = metric_device(f.device)
    extractor, name, fid_layer, desc = _extractor(f, weights)
    reference, reference_desc = reference_statistics(
        f.reference,
        extractor,
        name,
        f.cache_dir,
        fid_layer,
        datamodule=dm,
        data_cfg=data_cfg if dm is not None else None,
        data_dir=data_dir,
        limit=f.reference_limit,
        keep_features=f.kid,
        download=f.download,
        batch_size=f.batch_size,
        device=device,
        num_workers=f.num_workers,
    )
    return Scorer(
        extractor=extractor,
        extractor_name=desc,
        fid_layer=fid_layer,
        reference=reference,
        reference_desc=reference_desc,
        isc=f.isc,
        kid=f.kid,
        kid_subsets=f.kid_subsets,
        kid_subset_size=f.kid_subset_size,
        batch_size=f.batch_size,
        num_workers=f.num_workers,
        device=device,
    )
