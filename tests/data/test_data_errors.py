"""Damaged data is one line naming the file: a truncated JPEG (caught where it is decoded, also in a DataLoader
worker), an empty IDX file, an IDX file of images that are not Fashion-MNIST's 28x28."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from ddim.data.base import DatasetNotFoundError, ImageFiles
from ddim.data.fashion_mnist import FashionMNISTDataModule
from ddim.data.image_check import UnreadableImageError, check_images
from ddim.training.train import train

QUICK = [
    "experiment=quickstart",
    "logger=none",
    "trainer.max_steps=2",
    "data.batch_size=2",
    "data.num_workers=0",
]


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def _folder_with_a_truncated_jpeg(root: Path) -> Path:
    root.mkdir(parents=True)
    for i in range(3):
        (root / f"good{i}.jpg").write_bytes(_jpeg(i))
    truncated = root / "truncated.jpg"
    whole = _jpeg(9)
    truncated.write_bytes(whole[: int(0.7 * len(whole))])  # the headers intact, the scan cut short
    return truncated


def _write_idx(path: Path, images: np.ndarray) -> None:
    n, rows, cols = images.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        np.array([2051, n, rows, cols], dtype=">u4").tobytes() + images.astype(np.uint8).tobytes()
    )


def test_a_truncated_jpeg_passes_verify_but_its_decode_names_it(tmp_path):
    truncated = _folder_with_a_truncated_jpeg(tmp_path / "images")
    check_images(sorted((tmp_path / "images").iterdir()))  # verify reads no pixels: the damage goes unseen
    dataset = ImageFiles([truncated], lambda image: image)
    with pytest.raises(UnreadableImageError) as err:
        dataset[0]
    assert str(err.value).startswith(f"{truncated} cannot be decoded as an image (")
    assert "\n" not in str(err.value) and "ckpt_path=last" in str(err.value)


def test_a_truncated_jpeg_from_a_loader_worker_is_still_one_line(tmp_path):
    truncated = _folder_with_a_truncated_jpeg(tmp_path / "images")
    loader = DataLoader(ImageFiles([truncated], lambda image: image), batch_size=1, num_workers=1)
    with pytest.raises(UnreadableImageError) as err:
        next(iter(loader))
    assert str(err.value).startswith(f"{truncated} cannot be decoded") and "\n" not in str(err.value)


def test_training_on_a_folder_with_a_truncated_jpeg_is_one_line(tmp_path, train_cfg, exits_with_one_line):
    truncated = _folder_with_a_truncated_jpeg(tmp_path / "images")
    folder = [
        "data=image_folder",
        f"data.root={tmp_path / 'images'}",
        "model.net.in_channels=3",
        "model.net.out_channels=3",
    ]
    line = exits_with_one_line(train, train_cfg([*QUICK, *folder], tmp_path / "run"))
    assert line.startswith(f"{truncated} cannot be decoded as an image")


@pytest.mark.parametrize(
    "shape, words", [((0, 28, 28), "holds no images"), ((5, 10, 10), "holds 10x10 images")]
)
def test_an_empty_or_misshaped_idx_file_is_one_line(shape, words, tmp_path, train_cfg, exits_with_one_line):
    root = tmp_path / "fm"
    for split in ("train", "t10k"):
        _write_idx(root / f"{split}-images-idx3-ubyte", np.zeros(shape))
    overrides = [*QUICK, "data=fashion_mnist", f"data.root={root}", "data.image_size=8"]
    line = exits_with_one_line(train, train_cfg(overrides, tmp_path / "run"))
    assert words in line and "train-images-idx3-ubyte" in line
    assert not (tmp_path / "run" / "checkpoints").exists()
    with pytest.raises(DatasetNotFoundError, match=words):
        FashionMNISTDataModule(root=str(root)).setup("fit")
