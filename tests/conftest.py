import os

import pytest
from fakes import write_fake_cifar10


@pytest.fixture
def fake_cifar10(tmp_path, monkeypatch):
    """Fake cifar-10-batches-py; torchvision's md5 checks are replaced by an existence check.

    torchvision.datasets.cifar imports `check_integrity` into its module namespace and calls it from both
    CIFAR10._check_integrity (data batches) and CIFAR10._load_meta (batches.meta), so patching that one
    name lets the real CIFAR10 class parse our pickles; everything else runs unchanged.
    """
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    arrays = write_fake_cifar10(tmp_path / "cifar10")
    return tmp_path / "cifar10", arrays
