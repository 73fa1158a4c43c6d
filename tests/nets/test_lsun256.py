"""DDPM's LSUN 256x256 network (model=ddpm_lsun256) against diffusers' google/ddpm-church-256 config, and the
original (DDPM/DDIM PyTorch) checkpoint layout at six levels."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from ddim.checkpoints import check_diffusers_config, infer_unet_config, load_unet
from ddim.nets.convert import diffusers_to_original, original_to_diffusers
from ddim.nets.unet import UNet

diffusers = pytest.importorskip("diffusers")

PARAMETERS = 113_673_219  # DDPM Appendix B: "114M" for the 256x256 models
# google/ddpm-church-256's unet config.json (google/ddpm-bedroom-256 has the same network).
CHURCH_256 = {
    "act_fn": "silu",
    "attention_head_dim": None,
    "block_out_channels": [128, 128, 256, 256, 512, 512],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 256,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4,
}
# The same six levels at a quarter of the width and a quarter of the resolution (attention still on level 4).
NARROW = {**CHURCH_256, "block_out_channels": [32, 32, 64, 64, 128, 128], "sample_size": 64}


@pytest.fixture(scope="module")
def lsun_net_config(request) -> dict:
    from hydra import compose, initialize_config_dir

    conf = request.config.rootpath / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(overrides=["+model=ddpm_lsun256"])
    return dict(instantiate(cfg.model.net)), cfg.model


def ours_for(config: dict) -> dict:
    """Our UNet kwargs for a diffusers DDPM config."""
    widths = config["block_out_channels"]
    attn_levels = [i for i, b in enumerate(config["down_block_types"]) if b.startswith("Attn")]
    return dict(
        resolution=config["sample_size"],
        ch=widths[0],
        ch_mult=tuple(w // widths[0] for w in widths),
        num_res_blocks=config["layers_per_block"],
        attn_resolutions=tuple(config["sample_size"] // 2**i for i in attn_levels),
        dropout=0.0,
    )


def paired(config: dict, seed: int) -> tuple[torch.nn.Module, UNet]:
    """diffusers' network with random weights (norm affines and biases too), and ours loaded from it."""
    torch.manual_seed(seed)
    ref = diffusers.UNet2DModel(**config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    ours = UNet(**ours_for(config)).eval()
    ours.load_state_dict(diffusers_to_original(ref.state_dict()), strict=True)
    return ref, ours


def max_abs_diff(ref: torch.nn.Module, ours: UNet, size: int) -> tuple[float, float]:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3, 917])
    with torch.no_grad():
        expected, got = ref(x, t).sample, ours(x, t)
    return (got - expected).abs().max().item(), expected.abs().max().item()


def test_the_config_is_ddpms_114m_lsun_network_and_diffusers_church_256(lsun_net_config):
    net, model = lsun_net_config
    assert net == ours_for(CHURCH_256) | {"in_channels": 3, "out_channels": 3, "ch_mult": [1, 1, 2, 2, 4, 4],
                                          "attn_resolutions": [16]}  # fmt: skip
    assert model.optim.lr == 2e-5 and model.net.dropout == 0.0
    check_diffusers_config(CHURCH_256)  # a network our loader reads as the DDPM U-Net
    with torch.device("meta"):
        ours, ref = UNet(**net), diffusers.UNet2DModel(**CHURCH_256)
    assert sum(p.numel() for p in ours.parameters()) == PARAMETERS
    assert sum(p.numel() for p in ref.parameters()) == PARAMETERS
    # Tensor for tensor: our names map onto diffusers' with the same shapes, and back.
    converted = {k: v.shape for k, v in original_to_diffusers(ours.state_dict()).items()}
    assert converted == {k: v.shape for k, v in ref.state_dict().items()} and len(converted) == 450
    assert infer_unet_config(ref.state_dict()) == {
        **ours_for(CHURCH_256),
        "in_channels": 3,
        "out_channels": 3,
    }


def test_six_levels_compute_what_diffusers_computes():
    ref, ours = paired(NARROW, seed=2)
    diff, scale = max_abs_diff(ref, ours, 32)
    assert scale > 0.1 and diff <= 1e-4


@pytest.mark.slow
def test_the_full_lsun_network_matches_diffusers():
    # The real 114M-parameter network; a 32x32 input keeps the forwards under a second on a CPU (the network is
    # convolutional: attention still sits on level 4, there at 2x2). At 256x256 the difference is ~1e-5.
    ref, ours = paired(CHURCH_256, seed=3)
    diff, scale = max_abs_diff(ref, ours, 32)
    assert scale > 0.1 and diff <= 1e-4


def test_the_original_lsun_checkpoint_layout_loads(tmp_path):
    # The DDIM code downloads DDPM's LSUN models converted to PyTorch as plain state dicts of its Model, whose
    # tensor names are ours (down.{0..5}.block.{j}, down.4.attn.{j}, up.4.attn.{j}, mid.attn_1, ...).
    config = {**ours_for(NARROW), "resolution": 256, "attn_resolutions": (16,)}
    torch.manual_seed(4)
    original = UNet(**config).eval()
    names = set(original.state_dict())
    assert {"down.4.attn.1.q.weight", "up.4.attn.2.proj_out.weight", "down.4.downsample.conv.weight"} <= names
    assert not any(n.startswith(("down.5.downsample", "up.0.upsample")) or ".attn." in n and ".4." not in n
                   for n in names if not n.startswith("mid."))  # fmt: skip
    path = tmp_path / "model-4432000.ckpt"
    torch.save(original.state_dict(), path)
    model, inferred = load_unet(path)  # six levels: 256x256, attention at 16 (level 4), read from the tensors
    assert inferred == {**config, "ch_mult": (1, 1, 2, 2, 4, 4), "in_channels": 3, "out_channels": 3}
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(model(x, torch.tensor([10])), original(x, torch.tensor([10])))
