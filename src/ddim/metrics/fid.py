"""FID / IS / KID from uint8 images: feature extraction, Gaussian statistics, Fréchet distance.

The feature extractor is any torch-fidelity `FeatureExtractorBase` (the TF-compatible InceptionV3 for real
numbers, a tiny network in tests): it takes uint8 images (B, 3, H, W) and returns a tuple of features in the
order of its `features_list`. Everything downstream of the extractor is the same for every extractor.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ddim.errors import DDIMError
from ddim.io import atomic_write

FID_LAYER = "2048"
IS_LAYER = "logits_unbiased"


# ----------------------------------------------------------------------------------------------------------
# Math (pure torch, float64)


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance (like numpy.cov) of features (N, D), in float64."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise DDIMError(
            f"Need at least 2 feature vectors (N, D) for statistics, got shape {tuple(features.shape)}."
        )
    x = features.detach().to(torch.float64).cpu()
    mu = x.mean(dim=0)
    centred = x - mu
    sigma = centred.T @ centred / (x.shape[0] - 1)
    return mu, sigma


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative round-off clamped)."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(
    mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor
) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), the Fréchet distance between two Gaussians.

    tr((S1 S2)^(1/2)) is computed as the trace of (S1^(1/2) S2 S1^(1/2))^(1/2): the same eigenvalues, but the
    matrix is symmetric PSD, so eigh is stable where sqrtm of the non-symmetric product can go complex.
    """
    mu1, mu2 = (torch.as_tensor(m, dtype=torch.float64) for m in (mu1, mu2))
    sigma1, sigma2 = (torch.as_tensor(s, dtype=torch.float64) for s in (sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.numel(), mu1.numel()):
        raise DDIMError(
            f"Statistics do not match: mu {tuple(mu1.shape)} vs {tuple(mu2.shape)}, sigma {tuple(sigma1.shape)} vs "
            f"{tuple(sigma2.shape)}. Were the reference statistics made with another feature extractor?"
        )
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    tr_covmean = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + torch.trace(sigma1) + torch.trace(sigma2) - 2 * tr_covmean)


# ----------------------------------------------------------------------------------------------------------
# Statistics files


@dataclass
class Statistics:
    """Gaussian statistics of a feature set, plus the features themselves when KID needs them."""

    mu: torch.Tensor
    sigma: torch.Tensor
    n: int
    features: torch.Tensor | None = None

    @classmethod
    def from_features(cls, features: torch.Tensor, keep_features: bool = False) -> Statistics:
        mu, sigma = feature_statistics(features)
        return cls(mu, sigma, int(features.shape[0]), features.float().cpu() if keep_features else None)

    def save(self, path: str | Path) -> None:
        """Written to a temporary name first, then renamed: a crash never leaves a half-written cache."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"mu": self.mu.numpy(), "sigma": self.sigma.numpy(), "n": np.array(self.n)}
        if self.features is not None:
            arrays["features"] = self.features.numpy()
        with atomic_write(path) as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> Statistics:
        """Our .npz files, or any .npz with `mu` and `sigma` (e.g. the TTUR / pytorch-fid statistics files)."""
        try:
            with np.load(path) as f:
                mu, sigma = torch.from_numpy(f["mu"]).double(), torch.from_numpy(f["sigma"]).double()
                n = int(f["n"]) if "n" in f else -1
                features = torch.from_numpy(f["features"]) if "features" in f else None
        except (OSError, KeyError, ValueError) as err:
            raise DDIMError(
                f"Could not read FID statistics from {path} ({err}). Expected an .npz file with arrays 'mu' (D,) "
                "and 'sigma' (D, D)."
            ) from err
        return cls(mu, sigma, n, features)


# ----------------------------------------------------------------------------------------------------------
# Feature extraction


def _as_rgb_uint8(batch: torch.Tensor) -> torch.Tensor:
    if batch.dtype != torch.uint8:
        raise DDIMError(f"Feature extraction expects uint8 images, got {batch.dtype}.")
    if batch.ndim == 3:
        batch = batch[None]
    if batch.shape[1] == 1:  # gray data sets: Inception sees the gray value in all three channels
        batch = batch.expand(-1, 3, -1, -1)
    if batch.shape[1] != 3:
        raise DDIMError(
            f"Feature extraction expects 1 or 3 channels, got images of shape {tuple(batch.shape)}."
        )
    return batch.contiguous()


def extract_features(
    images: Dataset | Iterable[torch.Tensor],
    extractor: torch.nn.Module,
    batch_size: int = 100,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    desc: str = "Features",
) -> dict[str, torch.Tensor]:
    """Run `extractor` over a data set of uint8 images (C, H, W); returns {feature name: (N, D) float32}."""
    names = list(extractor.get_requested_features_list())
    if isinstance(images, Dataset):
        loader: Iterable[torch.Tensor] = DataLoader(
            images, batch_size=batch_size, shuffle=False, num_workers=num_workers
        )
        total = len(images)  # type: ignore[arg-type]
    else:
        loader, total = images, None
    extractor = extractor.to(device).eval()
    out: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    with torch.inference_mode(), tqdm(total=total, desc=desc, unit="img", leave=False) as bar:
        for batch in loader:
            feats = extractor(_as_rgb_uint8(batch).to(device))
            for name, value in zip(names, feats, strict=True):
                out[name].append(value.float().cpu())
            bar.update(batch.shape[0])
    if not out[names[0]]:
        raise DDIMError("No images found to compute features from.")
    return {name: torch.cat(parts) for name, parts in out.items()}


# ----------------------------------------------------------------------------------------------------------
# Metrics


def compute_metrics(
    features: dict[str, torch.Tensor],
    reference: Statistics | None,
    fid_layer: str = FID_LAYER,
    isc: bool = False,
    kid: bool = False,
    isc_splits: int = 10,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    rng_seed: int = 2020,
) -> dict[str, float]:
    """FID against `reference` (and IS / KID when asked) from features of the generated images."""
    metrics: dict[str, float] = {}
    feats = features[fid_layer]
    if reference is not None:
        stats = Statistics.from_features(feats)
        metrics["fid"] = frechet_distance(stats.mu, stats.sigma, reference.mu, reference.sigma)
    if isc:
        from torch_fidelity.metric_isc import isc_features_to_metric

        if IS_LAYER not in features:
            raise DDIMError("IS needs the Inception logits, which this feature extractor does not provide.")
        res = isc_features_to_metric(features[IS_LAYER], splits=isc_splits, shuffle=True, rng_seed=rng_seed)
        metrics["is"] = res["inception_score_mean"]
        metrics["is_std"] = res["inception_score_std"]
    if kid:
        from torch_fidelity.metric_kid import kid_features_to_metric

        if reference is None or reference.features is None:
            raise DDIMError(
                "KID needs the reference features; these statistics hold only mean and covariance."
            )
        size = min(kid_subset_size, feats.shape[0], reference.features.shape[0])
        res = kid_features_to_metric(
            feats,
            reference.features,
            kid_subsets=kid_subsets,
            kid_subset_size=size,
            rng_seed=rng_seed,
            verbose=False,
        )
        metrics["kid"] = res["kernel_inception_distance_mean"]
        metrics["kid_std"] = res["kernel_inception_distance_std"]
    return metrics
