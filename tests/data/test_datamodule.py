import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from ddim.data import DataConfigError, DatasetNotFoundError, ImageDataModule
from ddim.data.celeba import CELEBA_CROP, CelebA64DataModule, celeba_crop, celeba_transform
from ddim.data.cifar10 import CIFAR10DataModule
from ddim.data.digits import DigitsDataModule
from ddim.data.fashion_mnist import FashionMNISTDataModule, read_idx_images
from ddim.data.image_folder import ImageFolderDataModule

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")


# ----------------------------------------------------------------------------------------------------------
# helpers that write data in the on-disk formats the loaders read


def write_idx_images(path: Path, images: np.ndarray, magic: int = 2051) -> None:
    n, rows, cols = images.shape
    header = np.array([magic, n, rows, cols], dtype=">u4").tobytes()
    payload = header + images.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def unit(a: np.ndarray) -> np.ndarray:
    """uint8 pixels -> [-1, 1] computed in float32 by numpy, as an independent reference."""
    return a.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def first_batch(loader) -> torch.Tensor:
    return next(iter(loader))


# ----------------------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_range_split_and_exact_pixels():
    from sklearn.datasets import load_digits

    raw = load_digits().images  # (1797, 8, 8), values 0..16
    dm = DigitsDataModule(image_size=8, batch_size=32)
    dm.setup()
    assert dm.image_shape == (1, 8, 8)
    assert len(dm.train_set) == 1500 and len(dm.test_set) == 297
    batch = first_batch(dm.test_dataloader())
    assert batch.shape == (32, 1, 8, 8) and batch.dtype == torch.float32

    # Test split = last 297 in their order; v -> v / 8 - 1 rounded to the 8-bit levels (k / 127.5 - 1).
    def levels(v):
        return (np.round(v * 255.0 / 16.0) / 127.5 - 1.0).astype(np.float32)

    np.testing.assert_allclose(batch[:, 0].numpy(), levels(raw[1500:1532]), rtol=0, atol=1e-6)
    np.testing.assert_allclose(dm.train_set[7][0].numpy(), levels(raw[7]), rtol=0, atol=1e-6)
    assert np.abs(batch[:, 0].numpy() - (raw[1500:1532] / 8.0 - 1.0)).max() <= 1 / 255 + 1e-6
    assert float(batch.min()) == -1.0 and float(batch.max()) <= 1.0


def test_digits_upsampling_matches_pil_bilinear():
    from sklearn.datasets import load_digits

    raw = load_digits().images[1500].astype(np.float32) / 8.0 - 1.0
    expected = np.asarray(Image.fromarray(raw, mode="F").resize((16, 16), Image.BILINEAR))
    dm = DigitsDataModule(image_size=16)
    x = dm.test_set[0]
    assert x.shape == (1, 16, 16) and dm.image_shape == (1, 16, 16)
    np.testing.assert_allclose(x[0].numpy(), expected, atol=1 / 255 + 1e-5)  # then rounded to 8 bits
    batch = first_batch(dm.train_dataloader())
    assert batch.shape == (64, 1, 16, 16) and batch.min() >= -1 and batch.max() <= 1


def test_errors_are_user_errors_the_entry_points_print():
    from ddim.errors import DDIMError

    assert issubclass(DatasetNotFoundError, DDIMError) and issubclass(DataConfigError, DDIMError)
    with pytest.raises(DataConfigError, match="data.batch_size"):
        DigitsDataModule(batch_size=0)
    with pytest.raises(DataConfigError, match="limit"):
        DigitsDataModule(limit=0).setup()
    with pytest.raises(DataConfigError, match="num_test"):
        DigitsDataModule(num_test=1797)


def test_limit_keeps_the_first_images_and_small_sets_still_give_a_batch():
    dm = DigitsDataModule(image_size=8, limit=10, batch_size=64)
    full = DigitsDataModule(image_size=8)
    assert len(dm.train_set) == 10
    torch.testing.assert_close(dm.train_set[9], full.train_set[9])
    batch = first_batch(dm.train_dataloader())
    assert batch.shape == (10, 1, 8, 8)


# ----------------------------------------------------------------------------------------------------------
# flips


def _mirror_statistics(batch: torch.Tensor, originals: torch.Tensor) -> tuple[int, int]:
    """How many items equal an original exactly, and how many equal its exact mirror (and not itself)."""
    same = flipped = 0
    for x in batch:
        if any(torch.equal(x, o) for o in originals):
            same += 1
        elif any(torch.equal(x, o.flip(-1)) for o in originals):
            flipped += 1
        else:
            raise AssertionError("a training item is neither an original image nor its mirror")
    return same, flipped


def test_flips_only_in_training_and_exact_mirrors():
    torch.manual_seed(0)
    dm = DigitsDataModule(image_size=8, limit=64, batch_size=64, flip=True)
    originals = torch.stack([dm.train_set[i] for i in range(64)])
    # Digits that are their own mirror would count as both; the first 64 digits contain none.
    assert not any(torch.equal(o, o.flip(-1)) for o in originals)
    batch = first_batch(dm.train_dataloader())
    same, flipped = _mirror_statistics(batch, originals)
    assert same + flipped == 64 and 15 < flipped < 49  # Binomial(64, 0.5): 6 sigma band

    test_images = torch.stack([dm.test_set[i] for i in range(len(dm.test_set))])
    for loader in (dm.test_dataloader(), dm.val_dataloader()):
        b = torch.cat(list(loader))
        torch.testing.assert_close(b, test_images[: len(b)], rtol=0, atol=0)
    assert len(torch.cat(list(dm.val_dataloader()))) == 256

    no_flip = DigitsDataModule(image_size=8, limit=64, batch_size=64, flip=False)
    same, flipped = _mirror_statistics(first_batch(no_flip.train_dataloader()), originals)
    assert (same, flipped) == (64, 0)


# ----------------------------------------------------------------------------------------------------------
# Fashion-MNIST


@pytest.mark.skipif(not DEBIAN_FMNIST.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_debian_files_exact_pixels_and_padding():
    # Independent read of the raw bytes: 16-byte header, then row-major uint8 pixels.
    with gzip.open(DEBIAN_FMNIST / "t10k-images-idx3-ubyte.gz", "rb") as f:
        raw = f.read()
    assert int.from_bytes(raw[:4], "big") == 2051
    first = np.frombuffer(raw[16 : 16 + 784], dtype=np.uint8).reshape(28, 28)

    dm = FashionMNISTDataModule(batch_size=16)
    dm.setup("test")  # the test split alone: no need to decode the 60,000 training images here
    assert dm.image_shape == (1, 32, 32) and len(dm.test_set) == 10000
    batch = first_batch(dm.test_dataloader())
    assert batch.shape == (16, 1, 32, 32) and batch.min() >= -1 and batch.max() <= 1
    x = batch[0, 0]
    np.testing.assert_array_equal(x[2:30, 2:30].numpy(), unit(first))
    border = torch.cat([x[:2].flatten(), x[30:].flatten(), x[:, :2].flatten(), x[:, 30:].flatten()])
    assert torch.all(border == -1.0)
    assert float(batch.max()) == 1.0  # 255 maps to exactly 1


@pytest.mark.parametrize("layout", ["FashionMNIST/raw", "."])
@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_reads_torchvision_and_flat_layouts(tmp_path, layout, gz):
    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    test = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    suffix = ".gz" if gz else ""
    write_idx_images(tmp_path / layout / f"train-images-idx3-ubyte{suffix}", train)
    write_idx_images(tmp_path / layout / f"t10k-images-idx3-ubyte{suffix}", test)
    dm = FashionMNISTDataModule(root=str(tmp_path), image_size=28, batch_size=2, flip=False)
    assert dm.image_shape == (1, 28, 28)
    np.testing.assert_array_equal(dm.test_set[2][0].numpy(), unit(test[2]))
    np.testing.assert_array_equal(dm.train_set[4][0].numpy(), unit(train[4]))
    resized = FashionMNISTDataModule(root=str(tmp_path), image_size=16)
    assert resized.test_set[0].shape == (1, 16, 16)


def test_fashion_mnist_bad_files_and_missing_root_give_clear_errors(tmp_path):
    write_idx_images(tmp_path / "bad" / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28)), magic=2049)
    with pytest.raises(DatasetNotFoundError, match="magic 2049, expected 2051"):
        read_idx_images(tmp_path / "bad" / "t10k-images-idx3-ubyte")
    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "x").write_bytes(np.array([2051, 5, 28, 28], dtype=">u4").tobytes() + b"\0" * 10)
    with pytest.raises(DatasetNotFoundError, match="truncated"):
        read_idx_images(tmp_path / "short" / "x")
    dm = FashionMNISTDataModule(root=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist") as info:
        dm.setup()
    assert "data.root" in str(info.value)


# ----------------------------------------------------------------------------------------------------------
# CIFAR10 with torchvision's real class, on a fake folder


def test_cifar10_loads_torchvision_format_exactly(fake_cifar10):
    root, arrays = fake_cifar10
    dm = CIFAR10DataModule(root=str(root), batch_size=4, num_workers=0)
    dm.setup()
    assert dm.image_shape == (3, 32, 32)
    assert len(dm.train_set) == 20 and len(dm.test_set) == 4
    batch = first_batch(dm.test_dataloader())
    assert batch.shape == (4, 3, 32, 32) and batch.dtype == torch.float32
    expected = unit(arrays["test_batch"].reshape(4, 3, 32, 32))
    np.testing.assert_array_equal(batch.numpy(), expected)
    # Training images follow batch order: item 5 is row 1 of data_batch_2.
    np.testing.assert_array_equal(dm.train_set[5].numpy(), unit(arrays["data_batch_2"][1].reshape(3, 32, 32)))
    train = first_batch(dm.train_dataloader())
    assert train.shape == (4, 3, 32, 32) and train.min() >= -1 and train.max() <= 1


def test_cifar10_missing_and_corrupted_give_clear_errors(tmp_path, write_fake_cifar10):
    dm = CIFAR10DataModule(root=str(tmp_path / "cifar10"))
    with pytest.raises(DatasetNotFoundError) as info:
        dm.setup()
    msg = str(info.value)
    assert os.path.join(str(tmp_path / "cifar10"), "cifar-10-batches-py") in msg
    assert "data.download=true" in msg and "test_batch" in msg
    # Same file names but wrong contents: torchvision's md5 check fails -> still our message.
    write_fake_cifar10(tmp_path / "cifar10")
    with pytest.raises(DatasetNotFoundError, match="corrupted"):
        CIFAR10DataModule(root=str(tmp_path / "cifar10")).setup()


# ----------------------------------------------------------------------------------------------------------
# CelebA


def test_celeba_crop_matches_ddim_corners_and_centre(coordinate_image):
    crop = np.asarray(celeba_crop(coordinate_image()))
    assert crop.shape == (128, 128, 3)
    # (R, G) = (column, row) of the source pixel. DDIM: F.crop(img, top=121-64, left=89-64, 128, 128).
    assert tuple(crop[0, 0, :2]) == (25, 57)
    assert tuple(crop[0, 127, :2]) == (152, 57)
    assert tuple(crop[127, 0, :2]) == (25, 184)
    assert tuple(crop[127, 127, :2]) == (152, 184)
    assert tuple(crop[64, 64, :2]) == (89, 121)  # centred on (x=89, y=121)
    assert CELEBA_CROP == {"top": 57, "left": 25, "height": 128, "width": 128}
    # Same result as torchvision's functional crop with DDIM's arguments.
    import torchvision.transforms.functional as TF

    ref = np.asarray(TF.crop(coordinate_image(), 121 - 64, 89 - 64, 128, 128))
    np.testing.assert_array_equal(crop, ref)


def test_celeba_resize_is_antialiased_bilinear(coordinate_image):
    out = np.asarray(celeba_transform(64)(coordinate_image())).astype(float)
    assert out.shape == (64, 64, 3)
    # A linear ramp stays linear: output pixel i covers source columns 25 + 2i, 25 + 2i + 1.
    i = np.arange(1, 63)
    np.testing.assert_allclose(out[10, 1:63, 0], 25 + 2 * i + 0.5, atol=0.5)
    np.testing.assert_allclose(out[1:63, 10, 1], 57 + 2 * i + 0.5, atol=0.5)
    # Alternating 0/255 columns average to grey when antialiased; point sampling would keep 0 or 255.
    stripes = np.zeros((218, 178, 3), dtype=np.uint8)
    stripes[:, ::2] = 255
    grey = np.asarray(celeba_transform(64)(Image.fromarray(stripes))).astype(float)
    assert np.all(np.abs(grey[:, 1:63] - 127.5) <= 1.0)


@pytest.mark.parametrize("nested", [True, False])
def test_celeba_splits_and_layouts(tmp_path, nested, coordinate_image, write_fake_celeba):
    write_fake_celeba(tmp_path / "celeba" if nested else tmp_path, [0, 0, 1, 2, 0, 2])
    dm = CelebA64DataModule(root=str(tmp_path), batch_size=2, num_workers=0, flip=False)
    dm.setup()
    assert dm.image_shape == (3, 64, 64)
    assert len(dm.train_set) == 3 and len(dm.test_set) == 2
    batch = first_batch(dm.test_dataloader())
    assert batch.shape == (2, 3, 64, 64) and batch.min() >= -1 and batch.max() <= 1
    # Blue channel encodes the file index: test = partition 2 = files 4 and 6, in file order.
    blue = ((batch[:, 2] + 1) * 127.5).round()
    assert blue[0].unique().tolist() == [3.0] and blue[1].unique().tolist() == [5.0]
    expected = unit(np.asarray(celeba_transform(64)(coordinate_image(3))))
    np.testing.assert_array_equal(batch[0].permute(1, 2, 0).numpy(), expected)
    # Spawned workers (macOS, Windows) pickle the dataset, transforms included.
    clone = pickle.loads(pickle.dumps(dm.train_dataloader().dataset))
    torch.testing.assert_close(clone[0], dm.train_set[0], rtol=0, atol=0)


def test_celeba_missing_gives_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        CelebA64DataModule(root=str(tmp_path)).setup()
    msg = str(info.value)
    assert "img_align_celeba" in msg and "list_eval_partition.txt" in msg
    assert os.path.join(str(tmp_path), "celeba") in msg and "data.download=true" in msg


# ----------------------------------------------------------------------------------------------------------
# image folder


def test_image_folder_recursive_centre_crop_rgb(tmp_path):
    root = tmp_path / "imgs"
    (root / "sub" / "deeper").mkdir(parents=True)
    # 40x20 (w x h): red side margins, blue 20x20 centre; the centre square crop must keep only blue.
    wide = np.zeros((20, 40, 3), dtype=np.uint8)
    wide[:, :10, 0] = wide[:, 30:, 0] = 255
    wide[:, 10:30, 2] = 255
    Image.fromarray(wide).save(root / "a.png")
    Image.fromarray(np.full((16, 16), 255, dtype=np.uint8), "L").save(root / "sub" / "b.png")  # grey -> RGB
    Image.fromarray(np.zeros((30, 30, 4), dtype=np.uint8), "RGBA").save(root / "sub" / "deeper" / "c.png")
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(root / "sub" / "d.jpg", quality=95)
    (root / "notes.txt").write_text("not an image")

    dm = ImageFolderDataModule(root=str(root), image_size=16, batch_size=4, num_workers=0, flip=False)
    dm.setup()
    assert dm.image_shape == (3, 16, 16) and len(dm.train_set) == 4 and len(dm.test_set) == 4
    batch = first_batch(dm.test_dataloader())  # sorted: a.png, sub/b.png, sub/d.jpg, sub/deeper/c.png
    assert batch.shape == (4, 3, 16, 16) and batch.min() >= -1 and batch.max() <= 1
    blue = torch.tensor([-1.0, -1.0, 1.0]).view(3, 1, 1).expand(3, 16, 16)
    torch.testing.assert_close(batch[0], blue, rtol=0, atol=0)
    torch.testing.assert_close(batch[1], torch.ones(3, 16, 16), rtol=0, atol=0)

    clone = pickle.loads(pickle.dumps(dm.train_dataloader().dataset))
    assert len(clone) == 4

    held = ImageFolderDataModule(root=str(root), image_size=16, num_test=1)
    assert len(held.train_set) == 3 and len(held.test_set) == 1
    with pytest.raises(DataConfigError, match="num_test=4 holds out all 4 images"):
        ImageFolderDataModule(root=str(root), num_test=4).setup()
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        ImageFolderDataModule(root=str(tmp_path / "missing")).setup()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="No images"):
        ImageFolderDataModule(root=str(tmp_path / "empty")).setup()


# ----------------------------------------------------------------------------------------------------------
# the Hydra configs


@pytest.fixture
def compose_data(compose_config):
    def make(name: str, data_dir: Path, *overrides: str):
        return compose_config(["+paths=default", f"+data={name}", f"paths.data_dir={data_dir}", *overrides])

    return make


@pytest.mark.parametrize(
    ("name", "cls", "batch_size", "shape"),
    [
        ("cifar10", CIFAR10DataModule, 128, (3, 32, 32)),
        ("celeba64", CelebA64DataModule, 128, (3, 64, 64)),
        ("image_folder", ImageFolderDataModule, 64, (3, 64, 64)),
        ("digits", DigitsDataModule, 64, (1, 16, 16)),
        ("fashion_mnist", FashionMNISTDataModule, 64, (1, 32, 32)),
    ],
)
def test_configs_instantiate(tmp_path, name, cls, batch_size, shape, compose_data):
    cfg = compose_data(name, tmp_path)
    dm = instantiate(cfg.data)
    assert isinstance(dm, cls) and isinstance(dm, ImageDataModule)
    assert dm.batch_size == batch_size and dm.image_shape == shape
    if hasattr(dm, "download"):
        assert dm.download is False  # offline by default: missing data gives the clear error, not a fetch
    if name == "cifar10":
        assert Path(dm.root) == tmp_path / "cifar10"
    if name == "celeba64":
        assert Path(dm.root) == tmp_path
    if name == "fashion_mnist":
        assert dm.root == "/usr/share/datasets/fashion-mnist"


def test_configs_load_data_with_root_overrides(tmp_path, fake_cifar10, compose_data, write_fake_celeba):
    root, _ = fake_cifar10
    dm = instantiate(compose_data("cifar10", tmp_path, "data.num_workers=0", "data.batch_size=4").data)
    assert Path(dm.root) == root
    assert first_batch(dm.train_dataloader()).shape == (4, 3, 32, 32)

    write_fake_celeba(tmp_path / "celeba", [0, 0, 2])
    dm = instantiate(compose_data("celeba64", tmp_path, "data.num_workers=0", "data.batch_size=2").data)
    assert first_batch(dm.train_dataloader()).shape == (2, 3, 64, 64)

    write_idx_images(tmp_path / "fm" / "train-images-idx3-ubyte.gz", np.zeros((3, 28, 28)))
    write_idx_images(tmp_path / "fm" / "t10k-images-idx3-ubyte.gz", np.zeros((2, 28, 28)))
    dm = instantiate(compose_data("fashion_mnist", tmp_path, f"data.root={tmp_path / 'fm'}").data)
    assert first_batch(dm.test_dataloader()).shape == (2, 1, 32, 32)

    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "images" / "x.png")
    dm = instantiate(compose_data("image_folder", tmp_path, "data.num_workers=0", "data.image_size=8").data)
    assert first_batch(dm.test_dataloader()).shape == (1, 3, 8, 8)

    dm = instantiate(compose_data("digits", tmp_path, "data.limit=100").data)
    assert len(dm.train_set) == 100


def test_lightning_trainer_drives_the_datamodule(tmp_path):
    import pytorch_lightning as pl

    seen = {}

    class Probe(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def training_step(self, batch, batch_idx):
            seen["train"] = batch
            return (self.w - batch.mean()) ** 2

        def validation_step(self, batch, batch_idx):
            seen["val"] = batch

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = DigitsDataModule(image_size=8, batch_size=16)
    trainer = pl.Trainer(
        fast_dev_run=True,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(Probe(), datamodule=dm)
    assert seen["train"].shape == (16, 1, 8, 8) and seen["val"].shape == (16, 1, 8, 8)
    assert torch.is_tensor(seen["train"]) and seen["train"].min() >= -1 and seen["train"].max() <= 1


def test_num_workers_is_capped_at_the_available_cpus(monkeypatch):
    import ddim.data.base

    monkeypatch.setattr(ddim.data.base, "available_cpus", lambda: 2)
    assert DigitsDataModule(num_workers=4).num_workers == 2  # no "suggested max is 2" warning from torch
    assert DigitsDataModule(num_workers=1).num_workers == 1
    assert DigitsDataModule(num_workers=0).persistent_workers is False
    assert 1 <= ddim.data.base.available_cpus() <= (os.cpu_count() or 1)
