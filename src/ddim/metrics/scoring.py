"""The metric side of an evaluation: feature extractor and reference statistics, prepared (and checked)
before any sample is generated, then applied to the written sample files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from ddim.errors import DDIMError
from ddim.metrics.cache import guards_cache
from ddim.metrics.fid import FID_LAYER, IS_LAYER, Statistics, compute_metrics, extract_features
from ddim.metrics.inception import build_inception, resolve_inception_weights
from ddim.metrics.reference import reference_statistics
from ddim.metrics.shards import ShardImages


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


@guards_cache  # a cache path under a file, or a read-only cache that must grow: one line, nothing generated
def prepare_scorer(
    fid_cfg: DictConfig,
    *,
    is_zero: bool,
    datamodule: Callable[[], Any],
    data_cfg: dict[str, Any] | None,
    data_dir: str | Path,
) -> Scorer | None:
    """Resolve weights on every rank (so each fails fast), build the extractor and statistics on rank 0.

    `datamodule` builds the (shape-checked) data module, needed only for fid.reference=data."""
    f = fid_cfg
    isc, kid = bool(f.get("isc", False)), bool(f.get("kid", False))
    custom = f.get("feature_extractor")
    reference_src = str(f.get("reference", "data"))
    dm = datamodule() if reference_src == "data" else None
    weights = None
    if not custom:
        weights = resolve_inception_weights(
            str(f.get("weights", "auto")),
            f.get("weights_path"),
            f.get("detector_path"),
            f.cache_dir,
            bool(f.download),
        )
        if isc and not weights.has_logits:
            build_inception(weights, isc=True)  # raises the "no logits" message
    if not is_zero:
        return None
    device = metric_device(str(f.get("device", "auto")))
    if custom:
        extractor = hydra.utils.instantiate(custom, _convert_="all")
        name = extractor.get_name()
        fid_layer = extractor.get_default_feature_layer_for_metric("fid")
        if isc and IS_LAYER not in extractor.get_requested_features_list():
            raise DDIMError(
                f"fid.isc=true but the feature extractor {name} provides no {IS_LAYER!r} features."
            )
        desc = name
    else:
        assert weights is not None
        extractor = build_inception(weights, isc=isc)
        name, fid_layer = "inception-2015-12-05", FID_LAYER
        desc = f"{name} ({weights.source})"
    batch_size, num_workers = int(f.batch_size), int(f.get("num_workers", 0))
    reference, reference_desc = reference_statistics(
        reference_src,
        extractor,
        name,
        f.cache_dir,
        fid_layer,
        datamodule=dm,
        data_cfg=data_cfg if dm is not None else None,
        data_dir=data_dir,
        limit=f.get("reference_limit"),
        keep_features=kid,
        download=bool(f.download),
        batch_size=batch_size,
        device=device,
        num_workers=num_workers,
    )
    return Scorer(
        extractor=extractor,
        extractor_name=desc,
        fid_layer=fid_layer,
        reference=reference,
        reference_desc=reference_desc,
        isc=isc,
        kid=kid,
        kid_subsets=int(f.get("kid_subsets", 100)),
        kid_subset_size=int(f.get("kid_subset_size", 1000)),
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
    )
