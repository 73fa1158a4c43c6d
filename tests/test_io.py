"""ddim.io: atomic writes (old or new file, never a torn one; no temporary left; umask respected), the uint8
<-> PIL conversion and image grids."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image

from ddim import io
from ddim.images import (
    from_pil,
    make_grid,
    read_image,
    save_grid,
    save_image,
    to_pil,
    to_uint8,
    upscale_factor,
)
from ddim.io import (
    TEMP_SUFFIX,
    atomic_directory,
    atomic_write,
    remove_stale_temporaries,
    save_tensors,
    temporary_name,
    write_bytes,
    write_json,
    write_text,
)


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set a umask for the test and restore the process's own afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda value: os.umask(value)
    os.umask(old)


def test_round_trips(tmp_path):
    assert write_bytes(tmp_path / "a" / "b.bin", b"\x00\xff").read_bytes() == b"\x00\xff"  # parents created
    assert write_text(tmp_path / "t.txt", "line 1\nline 2\n").read_bytes() == b"line 1\nline 2\n"
    data = {"x": 1, "path": tmp_path, "nested": [1.5, None]}
    assert json.loads(write_json(tmp_path / "m.json", data).read_text()) == {**data, "path": str(tmp_path)}
    tensors = {"w": torch.randn(3, 4), "step": torch.tensor(7)}
    loaded = torch.load(save_tensors(tensors, tmp_path / "t.pt"), weights_only=True)
    assert torch.equal(loaded["w"], tensors["w"]) and int(loaded["step"]) == 7
    rgb = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    grey = torch.randint(0, 256, (1, 5, 7), dtype=torch.uint8)
    assert torch.equal(read_image(save_image(rgb, tmp_path / "rgb.png")), rgb)
    assert torch.equal(read_image(save_image(grey, tmp_path / "grey.png")), grey)
    assert torch.equal(read_image(save_image(to_pil(rgb), tmp_path / "pil.png")), rgb)  # a PIL image too
    assert Image.open(tmp_path / "grey.png").mode == "L"
    assert listing(tmp_path) == ["a", "grey.png", "m.json", "pil.png", "rgb.png", "t.pt", "t.txt"]


def test_pil_conversion():
    rgb = torch.randint(0, 256, (3, 4, 6), dtype=torch.uint8)
    pil = to_pil(rgb)
    assert pil.size == (6, 4) and pil.mode == "RGB"
    assert np.array_equal(np.asarray(pil), rgb.permute(1, 2, 0).numpy())  # independent of from_pil
    assert torch.equal(from_pil(pil), rgb)
    assert from_pil(Image.new("L", (3, 2), 9)).shape == (1, 2, 3)
    with pytest.raises(ValueError, match=r"uint8 image \(1\|3, H, W\)"):
        to_pil(torch.zeros(3, 4, 4))  # float: quantise with to_uint8 first


@pytest.mark.parametrize("stage", ["write", "fsync", "rename"])
def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch, stage):
    target = write_text(tmp_path / "metrics.json", "old")
    if stage == "fsync":
        monkeypatch.setattr(io.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("disk full")))
    if stage == "rename":
        monkeypatch.setattr(io.os, "replace", lambda a, b: (_ for _ in ()).throw(OSError("rename failed")))
    with pytest.raises((OSError, RuntimeError)):
        with atomic_write(target, "w") as f:
            f.write("new, half written")
            if stage == "write":
                raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert listing(tmp_path) == ["metrics.json"]


def test_a_reader_never_sees_a_partial_file(tmp_path):
    target = write_bytes(tmp_path / "x.bin", b"old")
    with atomic_write(target) as f:
        f.write(b"new")
        assert target.read_bytes() == b"old"  # until the writer is done, readers see the complete old file
        (temp,) = [p for p in tmp_path.iterdir() if p.name.endswith(TEMP_SUFFIX)]
        assert temp.parent == target.parent  # beside the target: the rename never crosses file systems
    assert target.read_bytes() == b"new"


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_mode_follows_umask(tmp_path, umask, mask):
    umask(mask)
    expected = 0o666 & ~mask
    plain = tmp_path / "plain"
    plain.write_bytes(b"")  # what a normal open() gives
    assert mode_of(plain) == expected
    assert mode_of(write_bytes(tmp_path / "a.bin", b"1")) == expected
    assert mode_of(save_image(torch.zeros(1, 2, 2, dtype=torch.uint8), tmp_path / "a.png")) == expected
    assert mode_of(save_tensors({"a": torch.zeros(1)}, tmp_path / "a.pt")) == expected
    with atomic_directory(tmp_path / "shard") as folder:
        (folder / "0.png").write_bytes(b"png")
    assert mode_of(tmp_path / "shard") == 0o777 & ~mask
    assert mode_of(tmp_path / "shard" / "0.png") == expected


def test_atomic_directory_replaces_or_keeps(tmp_path):
    final = tmp_path / "shard_00000"
    with atomic_directory(final) as folder:
        (folder / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_directory(final) as folder:
            (folder / "a").write_text("2")
            raise RuntimeError("killed half way")
    assert listing(tmp_path) == ["shard_00000"] and (final / "a").read_text() == "1"
    with atomic_directory(final) as folder:  # an existing folder is replaced as a whole
        (folder / "b").write_text("3")
    assert listing(final) == ["b"]


def test_remove_stale_temporaries_only_touches_ours(tmp_path):
    keep = ["last.ckpt", ".hidden", ".notes.tmp", "x.ddim-tmp", ".x.ddim-tmp"]
    for name in keep:
        (tmp_path / name).write_text("user file")
    # What kill -9 leaves behind: a temporary file and a temporary folder.
    stale_file = temporary_name(tmp_path / "last.ckpt")
    stale_file.write_bytes(b"half a checkpoint")
    stale_dir = temporary_name(tmp_path / "shard_00001")
    stale_dir.mkdir()
    (stale_dir / "000001.png").write_bytes(b"half")
    other = temporary_name(tmp_path / "shard_00002")
    other.mkdir()

    assert remove_stale_temporaries(tmp_path, older_than_s=3600) == []  # fresh: may belong to a live writer
    assert remove_stale_temporaries(tmp_path, targets={"shard_00001"}) == [stale_dir]
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([stale_file, other])
    assert listing(tmp_path) == sorted(keep)
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_to_uint8():
    x = torch.tensor([-2.0, -1.0, 0.0, 0.999, 1.0, 3.0])
    assert to_uint8(x).tolist() == [0, 0, 128, 255, 255, 255]
    assert to_uint8(torch.tensor([-0.5])).tolist() == [round(0.5 * 127.5)]
    u = torch.tensor([3, 200], dtype=torch.uint8)
    assert to_uint8(u) is u


def test_save_grid_layout_and_nearest_upscale(tmp_path):
    images = torch.rand(5, 3, 4, 6) * 2 - 1
    path = save_grid(images, tmp_path / "sub" / "grid.png", nrow=2, min_width=0)
    pixels = np.asarray(Image.open(path))
    assert pixels.shape == (3 * 6 + 2, 2 * 8 + 2, 3)  # 3 rows x 2 cols of 4x6 images with 2 px padding
    assert np.array_equal(pixels[2:6, 2:8], to_uint8(images[0]).permute(1, 2, 0).numpy())
    assert np.array_equal(pixels[8:12, 10:16], to_uint8(images[3]).permute(1, 2, 0).numpy())
    assert listing(path.parent) == ["grid.png"]  # no temporary left behind
    gray = save_grid(torch.zeros(2, 3, 1, 4, 4), tmp_path / "gray.png", min_width=0)  # (rows, cols, C, H, W)
    assert np.asarray(Image.open(gray)).shape == (2 * 6 + 2, 3 * 6 + 2)

    # By default a small grid (the quickstart's 8x8 digits) is enlarged to >= 512 px by whole-pixel blocks.
    digits = torch.rand(64, 1, 8, 8) * 2 - 1
    big = np.asarray(Image.open(save_grid(digits, tmp_path / "digits.png")))
    small = make_grid(digits)[0].numpy()  # 82 x 82
    k = upscale_factor(small.shape[1])
    assert k == 7 and big.shape == (82 * 7, 82 * 7) and big.shape[1] >= 512
    assert np.array_equal(big, np.kron(small, np.ones((k, k), dtype=np.uint8)))  # nearest: exact blocks
    wide = torch.zeros(1, 3, 8, 600)
    assert Image.open(save_grid(wide, tmp_path / "wide.png")).size == (604, 12)  # wide enough: as is
