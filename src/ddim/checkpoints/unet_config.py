"""The UNet keyword arguments that fit a checkpoint: from its recorded config (our checkpoints store
`UNet.config` in their hyper-parameters) or, for foreign files only, read from the tensors themselves.

Any DDPM-style U-Net is read this way, not only the CIFAR10 one: levels, channel multipliers, residual blocks
per level and where attention sits all show in the tensor names and shapes.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from ddim.errors import DDIMError
from ddim.nets.convert import diffusers_to_original, key_layout, strip_wrapper_prefixes
from ddim.nets.unet import UNet

# Published DDPM/DDIM configs: 4 levels = CIFAR10 32x32, 5 = CelebA 64x64, 6 = LSUN 256x256. The resolution
# changes no tensor (the network is convolutional); it only names where attention sits (attn_resolutions)
# and the image size samplers draw by default.
_DEFAULT_RESOLUTION = {4: 32, 5: 64, 6: 256}

# diffusers UNet2DModel.__init__ defaults for the fields that decide whether a config is the DDPM network
# (a config.json omits fields left at their default). tests/test_unet.py checks them against diffusers.
DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "mid_block_type": "UNetMidBlock2D",
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
}
# What the DDPM network needs from a diffusers config (google/ddpm-cifar10-32 has exactly these).
DDPM_DIFFUSERS_FIELDS: dict[str, Any] = {
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "freq_shift": 1,
    "flip_sin_to_cos": False,
    "mid_block_type": "UNetMidBlock2D",
    "mid_block_scale_factor": 1,
    "downsample_padding": 0,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-6,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
}


def default_resolution(num_levels: int) -> int:
    """Image size assumed when a checkpoint does not say: the published DDPM config with that many levels
    (4 -> 32, 5 -> 64, 6 -> 256), otherwise a 4x4 lowest level, 2 ** (num_levels + 1)."""
    return _DEFAULT_RESOLUTION.get(num_levels, 2 ** (num_levels + 1))


def _attn_levels(resolution: int, attn_resolutions: Any, num_levels: int) -> list[int]:
    return [i for i in range(num_levels) if resolution // 2**i in set(attn_resolutions)]


def config_from_record(net: Mapping[str, Any], resolution: int | None = None) -> dict[str, Any]:
    """UNet kwargs from a recorded config (checkpoint hyper-parameters; older ones may omit defaults)."""
    params = inspect.signature(UNet.__init__).parameters
    defaults = {name: p.default for name, p in params.items() if name != "self"}
    config = {**defaults, **{k: v for k, v in net.items() if k in defaults}}
    config["ch_mult"] = tuple(config["ch_mult"])
    config["attn_resolutions"] = tuple(config["attn_resolutions"])
    if resolution is not None and resolution != config["resolution"]:
        # Same tensors, other image size: keep attention at the same levels.
        levels = _attn_levels(config["resolution"], config["attn_resolutions"], len(config["ch_mult"]))
        config["attn_resolutions"] = tuple(resolution // 2**i for i in levels)
        config["resolution"] = resolution
    return config


def infer_unet_config(sd: Mapping[str, torch.Tensor], resolution: int | None = None) -> dict[str, Any]:
    """UNet keyword arguments that reproduce a foreign U-Net state dict (original or diffusers keys).

    Channels from conv_in/conv_out, ch_mult from each level's first conv, num_res_blocks from the first level,
    attention levels from which levels have attn tensors. `resolution` defaults to `default_resolution(levels)`.
    Dropout is not stored in weights: inferred configs use 0.0 (sampling runs in eval mode, where dropout does
    nothing).
    """
    if key_layout(sd) == "diffusers":
        sd = diffusers_to_original(sd)
    sd = strip_wrapper_prefixes(sd)
    try:
        ch, in_channels = sd["conv_in.weight"].shape[:2]
        out_channels = sd["conv_out.weight"].shape[0]
        levels = sorted({int(m.group(1)) for k in sd if (m := re.match(r"down\.(\d+)\.block\.", k))})
        num_res_blocks = len({k.split(".")[3] for k in sd if k.startswith("down.0.block.")})
        ch_mult = []
        for level in levels:
            width = sd[f"down.{level}.block.0.conv1.weight"].shape[0]
            if width % ch:
                raise DDIMError(
                    f"level {level} has {width} channels, not a multiple of ch={ch}; not a DDPM U-Net checkpoint."
                )
            ch_mult.append(width // ch)
    except KeyError as e:
        raise DDIMError(
            f"checkpoint lacks tensor {e.args[0]!r} needed to infer the U-Net config; not a DDPM U-Net checkpoint."
        ) from e
    if not levels or levels != list(range(len(levels))):
        raise DDIMError(f"checkpoint has down levels {levels}, expected 0..N-1; not a DDPM U-Net checkpoint.")
    if resolution is None:
        resolution = default_resolution(len(levels))
    attn_levels = sorted({int(m.group(1)) for k in sd if (m := re.match(r"down\.(\d+)\.attn\.", k))})
    return {
        "in_channels": int(in_channels),
        "out_channels": int(out_channels),
        "resolution": int(resolution),
        "ch": int(ch),
        "ch_mult": tuple(ch_mult),
        "num_res_blocks": num_res_blocks,
        "attn_resolutions": tuple(resolution // 2**i for i in attn_levels),
        "dropout": 0.0,
    }


def check_diffusers_config(config: Mapping[str, Any]) -> None:
    """Raise if a diffusers UNet2DModel config is not the DDPM network our UNet computes."""
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise DDIMError(
            f"diffusers model class {config['_class_name']!r} is not supported; only UNet2DModel is."
        )
    problems = []
    for name, expected in DDPM_DIFFUSERS_FIELDS.items():
        value = config.get(name, DIFFUSERS_DEFAULTS[name])
        same = math.isclose(value, expected) if isinstance(expected, float) else value == expected
        if not same:
            problems.append(f"{name}={value!r} (needs {expected!r})")
    allowed = {
        "down_block_types": {"DownBlock2D", "AttnDownBlock2D"},
        "up_block_types": {"UpBlock2D", "AttnUpBlock2D"},
    }
    for name, kinds in allowed.items():
        bad = [b for b in config.get(name, ()) if b not in kinds]
        if bad:
            problems.append(f"{name} contains {bad} (needs only {sorted(kinds)})")
    head_dim = config.get("attention_head_dim", DIFFUSERS_DEFAULTS["attention_head_dim"])
    if head_dim is not None:
        widths = list(config.get("block_out_channels", ()))
        kinds = list(config.get("down_block_types", ()))
        # The mid block always has attention at the lowest level's width.
        attn_widths = [w for w, b in zip(widths, kinds, strict=False) if "Attn" in b] + widths[-1:]
        if any(w != head_dim for w in attn_widths):
            problems.append(
                f"attention_head_dim={head_dim} means multi-head attention (needs None: one head)"
            )
    if problems:
        raise DDIMError("the diffusers config is not the DDPM U-Net: " + "; ".join(problems) + ".")


def diffusers_resolution(config: Mapping[str, Any]) -> int | None:
    """The square image size a diffusers config.json names (sample_size), if any."""
    size = config.get("sample_size")
    size = size[0] if isinstance(size, (list, tuple)) and len(set(size)) == 1 else size
    return size if isinstance(size, int) else None
