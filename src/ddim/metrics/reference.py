"""Reference (training-set) statistics for FID, computed once and cached under paths.cache_dir.

Sources:
- "data": the training split of the configured datamodule, unflipped, quantised to uint8 with the same
  `to_uint8` as generated samples and written as PNG shards (cache_dir/reference/<key>/images), then pushed
  through the same feature code as the samples. The key hashes the data config, so another data set, root,
  image size or limit gets its own cache.
- "cifar10-train": torch-fidelity's registered CIFAR10 training set (uint8 straight from the torchvision
  files under paths.data_dir/cifar10; downloaded only when fid.download is true).
- a path to an .npz with `mu` and `sigma` (e.g. statistics made elsewhere with the same Inception).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ddim.errors import DDIMError
from ddim.images import to_uint8
from ddim.io import write_json
from ddim.metrics.fid import Statistics, extract_features
from ddim.metrics.shards import ShardImages, ShardPlan, shard_complete, write_shard

log = logging.getLogger(__name__)

# Loader settings that do not change which pixels the training set holds.
_NOT_IDENTITY = {
    "batch_size",
    "num_workers",
    "pin_memory",
    "persistent_workers",
    "flip",
    "val_size",
    "test_limit",
}
_NOT_IDENTITY |= {"download"}


def data_key(data_cfg: dict[str, Any], limit: int | None) -> str:
    """Short, stable name for a data config: its class name plus a hash of the pixel-relevant fields."""
    fields = {k: v for k, v in sorted(data_cfg.items()) if k not in _NOT_IDENTITY}
    fields["reference_limit"] = limit
    digest = hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:10]
    name = str(data_cfg.get("_target_", "data")).rsplit(".", 1)[-1].replace("DataModule", "").lower()
    return f"{name}-{digest}"


def write_reference_images(
    train_set: Dataset, root: Path, limit: int | None, shard_size: int = 5000, num_workers: int = 0
) -> ShardPlan:
    """Training images (float [-1, 1]) -> uint8 PNG shards, skipping shards already written."""
    n = len(train_set)  # type: ignore[arg-type]
    if limit is not None:
        n = min(n, int(limit))
    if n < 2:
        raise DDIMError(f"The reference training set has {n} images; FID statistics need at least 2.")
    plan = ShardPlan(n, shard_size)
    for shard in range(plan.num_shards):
        if shard_complete(root, shard, plan):
            continue
        idx = plan.indices(shard)
        subset = torch.utils.data.Subset(train_set, list(idx))
        loader = DataLoader(subset, batch_size=500, shuffle=False, num_workers=num_workers)
        images = torch.cat([to_uint8(b[0] if isinstance(b, (list, tuple)) else b) for b in loader])
        write_shard(root, shard, images, idx, plan.name_width)
    return plan


def feature_dim(extractor: torch.nn.Module, feature_layer: str, device: str | torch.device) -> int:
    """The length of the extractor's feature vector at feature_layer, from one black 32x32 image."""
    names = list(extractor.get_requested_features_list())
    with torch.inference_mode():
        out = extractor.to(device).eval()(torch.zeros(1, 3, 32, 32, dtype=torch.uint8, device=device))
    return int(out[names.index(feature_layer)].reshape(1, -1).shape[1])


def check_dimension(
    stats: Statistics,
    source: str,
    extractor: torch.nn.Module,
    key: str,
    layer: str,
    device: str | torch.device,
) -> None:
    """Statistics someone else computed must be of this extractor's features (else FID fails after sampling)."""
    dim = feature_dim(extractor, layer, device)
    if stats.mu.numel() != dim:
        raise DDIMError(
            f"fid.reference={source} holds statistics of {stats.mu.numel()}-dimensional features, but the "
            f"feature extractor gives {dim} ({key}, layer {layer}): use statistics made with the same extractor, "
            "or fid.reference=data to compute them. Nothing was generated."
        )


def statistics_file(source: str, keep_features: bool) -> tuple[Statistics, str]:
    """fid.reference=<path>: statistics someone computed before (an .npz with mu, sigma and maybe features)."""
    path = Path(source).expanduser()
    if not path.is_file():
        raise DDIMError(
            f"fid.reference={source} is neither 'data', 'cifar10-train' nor an existing statistics file."
        )
    stats = Statistics.load(path)
    if keep_features and stats.features is None:
        raise DDIMError(f"KID needs reference features, but {path} holds only mu/sigma; set fid.kid=false.")
    return stats, str(path)


def reference_statistics(
    source: str,
    extractor: torch.nn.Module,
    extractor_key: str,
    cache_dir: str | Path,
    feature_layer: str,
    datamodule: Any | None = None,
    data_cfg: dict[str, Any] | None = None,
    data_dir: str | Path = "data",
    limit: int | None = None,
    keep_features: bool = False,
    download: bool = False,
    batch_size: int = 100,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> tuple[Statistics, str]:
    """(statistics, description) for the FID reference, loading the cache or computing and caching it."""
    cache_dir = Path(cache_dir)
    if source not in ("data", "cifar10-train"):
        stats, desc = statistics_file(source, keep_features)
        check_dimension(stats, source, extractor, extractor_key, feature_layer, device)
        return stats, desc
    if source == "cifar10-train":
        folder = cache_dir / "reference" / "torch-fidelity-cifar10-train"
    else:
        if data_cfg is None:
            raise DDIMError("fid.reference=data needs a data config, e.g. data=cifar10.")
        folder = cache_dir / "reference" / data_key(data_cfg, limit)
    suffix = "-features" if keep_features else ""
    stats_path = folder / f"stats-{extractor_key}-{feature_layer}{suffix}.npz"
    # Statistics cached with their features (for KID, e.g. by the training FID monitor) serve FID alone too.
    with_features = folder / f"stats-{extractor_key}-{feature_layer}-features.npz"
    for cached in [stats_path] if keep_features else [stats_path, with_features]:
        if cached.is_file():
            log.info(f"Reference statistics from cache: {cached}")
            stats = Statistics.load(cached)
            stats.features = stats.features if keep_features else None
            return stats, str(cached)

    if source == "cifar10-train":
        images = _cifar10_train(Path(data_dir) / "cifar10", download, limit)
        desc = "CIFAR10 train (torch-fidelity)"
    else:
        if datamodule is None:
            raise DDIMError("fid.reference=data needs a data config, e.g. data=cifar10.")
        try:
            train_set = datamodule.train_set
        except FileNotFoundError as err:  # the data module's message says where the files go
            raise DDIMError(f"FID reference statistics need the training data: {err}") from err
        plan = write_reference_images(train_set, folder / "images", limit, num_workers=num_workers)
        write_json(folder / "data.json", data_cfg)
        images = ShardImages(folder / "images", plan)
        desc = f"training set of {data_cfg.get('_target_')}"
    log.info(f"Computing reference statistics once ({len(images)} images, {desc}) -> {stats_path}")
    feats = extract_features(images, extractor, batch_size, device, num_workers, desc="Reference features")
    stats = Statistics.from_features(feats[feature_layer], keep_features=keep_features)
    stats.save(stats_path)
    return stats, str(stats_path)


def _cifar10_train(root: Path, download: bool, limit: int | None) -> Dataset:
    from torch_fidelity.datasets import Cifar10_RGB, TransformPILtoRGBTensor

    try:
        ds = Cifar10_RGB(str(root), train=True, transform=TransformPILtoRGBTensor(), download=download)
    except Exception as err:  # noqa: BLE001 - missing files and network errors come in many types
        raise DDIMError(
            f"fid.reference=cifar10-train needs CIFAR10 under {root}/cifar-10-batches-py ({type(err).__name__}). "
            "Download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it there, or set "
            "fid.download=true on a machine with internet."
        ) from err
    if limit is not None:
        ds = torch.utils.data.Subset(ds, range(min(int(limit), len(ds))))
    return ds
