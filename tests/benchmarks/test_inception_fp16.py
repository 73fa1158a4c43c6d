"""benchmarks/inception_fp16.py: the FID Inception weights stored in float16 come back as the float32
torch-fidelity state dict (constants rebuilt exactly, convolutions within float16 rounding)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fp16() -> dict:
    return runpy.run_path(str(ROOT / "benchmarks" / "inception_fp16.py"))


def inception_like() -> dict[str, torch.Tensor]:
    """Two conv blocks in torch-fidelity's naming, a detector's zero logits layer."""
    gen = torch.Generator().manual_seed(0)
    state = {}
    for block, (cin, cout) in {"Conv2d_1a_3x3": (3, 8), "Mixed_5b.branch1x1": (8, 4)}.items():
        state[f"{block}.conv.weight"] = torch.randn(cout, cin, 3, 3, generator=gen)
        state[f"{block}.bn.weight"] = torch.ones(cout)
        state[f"{block}.bn.bias"] = torch.randn(cout, generator=gen)
        state[f"{block}.bn.running_mean"] = torch.randn(cout, generator=gen)
        state[f"{block}.bn.running_var"] = torch.rand(cout, generator=gen) + 0.5
        state[f"{block}.bn.num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    return state


def test_pack_then_unpack_restores_the_state_dict(fp16, tmp_path):
    state = inception_like()
    path = fp16["pack"](state, tmp_path / "w.safetensors")
    stored = load_file(str(path))
    # Constants are not stored; convolutions are float16, the rest float32.
    assert set(stored) == {
        k for k in state if k.endswith(("conv.weight", "bn.bias", "running_mean", "running_var"))
    }
    assert {v.dtype for k, v in stored.items() if k.endswith("conv.weight")} == {torch.float16}
    back = fp16["unpack_state_dict"](load_file(str(path)))
    assert set(back) == set(state)
    for name, value in state.items():
        if name.endswith("conv.weight"):
            assert back[name].dtype == torch.float32
            assert torch.allclose(back[name], value, rtol=1e-3, atol=1e-4), name
            assert not torch.equal(back[name], value)  # really rounded through float16
        else:
            assert torch.equal(back[name], value.to(back[name].dtype)), name


def test_a_scale_that_is_not_one_is_kept(fp16, tmp_path):
    state = inception_like()
    state["Conv2d_1a_3x3.bn.weight"] = torch.full((8,), 2.0)
    back = fp16["unpack_state_dict"](fp16["pack_state_dict"](state))
    assert torch.equal(back["Conv2d_1a_3x3.bn.weight"], state["Conv2d_1a_3x3.bn.weight"])
