"""LSUN from exported image folders: the DDIM code's crop (checked against torchvision's own transforms), DDPM's
crop, the folder layout and the Hydra config."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from ddim.data import DatasetNotFoundError
from ddim.data.lsun import LSUNDataModule, ddim_crop, ddpm_crop
from ddim.images import from_pil

transforms = pytest.importorskip("torchvision.transforms")


def random_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize(("w", "h"), [(341, 256), (256, 303), (303, 256), (512, 389), (200, 150), (64, 64)])
def test_ddim_crop_is_torchvision_resize_then_center_crop(w, h):
    # ermongroup/ddim reads LSUN with transforms.Compose([Resize(size), CenterCrop(size)]): the same pixels.
    img = random_image(w, h)
    for size in (256, 32):
        expected = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size)])(img)
        assert torch.equal(from_pil(ddim_crop(img, size)), from_pil(expected)), (w, h, size)


def test_both_crops_cut_the_centre_of_an_lsun_sized_image():
    # LSUN images already have a 256-pixel short side: both crops are centre crops, no resize.
    columns = np.tile(np.arange(303, dtype=np.uint16)[None, :, None] % 256, (256, 1, 3)).astype(np.uint8)
    img = Image.fromarray(columns)  # pixel value = column index (mod 256)
    ddim, ddpm = from_pil(ddim_crop(img, 256)), from_pil(ddpm_crop(img, 256))
    assert ddim.shape == ddpm.shape == (3, 256, 256)
    # 47 spare columns: torchvision's round(23.5) = 24, StyleGAN's 47 // 2 = 23.
    assert int(ddim[0, 0, 0]) == 24 and int(ddpm[0, 0, 0]) == 23
    assert torch.equal(ddim[:, :, :-1], ddpm[:, :, 1:])
    even = Image.fromarray(columns[:, :300])  # 44 spare columns: both start at 22
    assert torch.equal(from_pil(ddim_crop(even, 256)), from_pil(ddpm_crop(even, 256)))
    # DDPM's crop resizes the centre square with Lanczos; the DDIM code resizes the short side bilinearly first.
    big = random_image(600, 400, seed=1)
    square = big.crop((100, 0, 500, 400)).resize((32, 32), Image.LANCZOS)
    assert torch.equal(from_pil(ddpm_crop(big, 32)), from_pil(square))
    assert not torch.equal(from_pil(ddim_crop(big, 32)), from_pil(square))


def write_lsun(root: Path, category: str, n_train: int, n_val: int) -> None:
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            folder = root / f"{category}_{split}" / f"{i % 2}"  # LSUN's export nests files in subfolders
            folder.mkdir(parents=True, exist_ok=True)
            random_image(40 + i, 32, seed=i).save(folder / f"{i:04d}.webp", lossless=True)


def test_datamodule_reads_the_category_folders(tmp_path):
    write_lsun(tmp_path, "bedroom", 3, 2)
    dm = LSUNDataModule(root=tmp_path, category="bedroom", image_size=16, batch_size=2, num_workers=0)
    assert dm.image_shape == (3, 16, 16) and len(dm.train_set) == 3 and len(dm.test_set) == 2
    first = sorted((tmp_path / "bedroom_val").rglob("*.webp"))[0]
    with Image.open(first) as img:
        expected = from_pil(ddim_crop(img.convert("RGB"), 16)).float() / 127.5 - 1
    torch.testing.assert_close(dm.test_set[0], expected, rtol=0, atol=1e-6)
    ddpm = LSUNDataModule(root=tmp_path, category="bedroom", image_size=16, crop="ddpm")
    with Image.open(first) as img:
        expected = from_pil(ddpm_crop(img.convert("RGB"), 16)).float() / 127.5 - 1
    torch.testing.assert_close(ddpm.test_set[0], expected, rtol=0, atol=1e-6)
    with pytest.raises(
        DatasetNotFoundError, match=r"church_outdoor train images not found .*data\.py export"
    ):
        LSUNDataModule(root=tmp_path, image_size=16).setup()


def test_config_builds_the_256_church_loader(tmp_path, compose_config):
    cfg = compose_config(["+paths=default", "+data=lsun", f"paths.data_dir={tmp_path}", "data.num_workers=0"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, LSUNDataModule) and Path(dm.root) == tmp_path / "lsun"
    assert (dm.category, dm.crop, dm.batch_size, dm.image_shape) == (
        "church_outdoor",
        "ddim",
        64,
        (3, 256, 256),
    )
    write_lsun(tmp_path / "lsun", "church_outdoor", 2, 1)
    batch = next(iter(dm.test_dataloader()))
    assert batch.shape == (1, 3, 256, 256) and -1 <= batch.min() and batch.max() <= 1
