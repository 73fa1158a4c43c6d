"""U-Net state-dict key layouts: the original DDPM/DDIM names (which `ddim.nets.unet.UNet` uses) and diffusers'
UNet2DModel names, renamed in either direction from ONE table of key patterns (pure functions on dicts).

Reading checkpoint files, choosing EMA weights and rebuilding networks is `ddim.checkpoints`' work.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

import torch

from ddim.errors import DDIMError

KeyLayout = Literal["original", "diffusers"]
_SIDES: tuple[KeyLayout, KeyLayout] = ("original", "diffusers")

# Wrappers that only prepend a prefix to every key: DataParallel/DDP ("module.") and torch.compile ("_orig_mod.").
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

# Module paths, (original, diffusers). Placeholders: {level}/{j} are indices kept as they are; {up_level} is an
# up level, numbered from the top in the original (up.0 is full resolution) and from the bottom in diffusers
# (up_blocks.0 is the lowest resolution), so it maps to num_levels - 1 - up_level in both directions;
# {resnet}/{attn} are sub-module names translated with SUBMODULES.
KEY_PATTERNS: tuple[tuple[str, str], ...] = (
    ("temb.dense.0", "time_embedding.linear_1"),
    ("temb.dense.1", "time_embedding.linear_2"),
    ("conv_in", "conv_in"),
    ("norm_out", "conv_norm_out"),
    ("conv_out", "conv_out"),
    ("down.{level}.block.{j}.{resnet}", "down_blocks.{level}.resnets.{j}.{resnet}"),
    ("down.{level}.attn.{j}.{attn}", "down_blocks.{level}.attentions.{j}.{attn}"),
    ("down.{level}.downsample.conv", "down_blocks.{level}.downsamplers.0.conv"),
    ("mid.block_1.{resnet}", "mid_block.resnets.0.{resnet}"),
    ("mid.attn_1.{attn}", "mid_block.attentions.0.{attn}"),
    ("mid.block_2.{resnet}", "mid_block.resnets.1.{resnet}"),
    ("up.{up_level}.block.{j}.{resnet}", "up_blocks.{up_level}.resnets.{j}.{resnet}"),
    ("up.{up_level}.attn.{j}.{attn}", "up_blocks.{up_level}.attentions.{j}.{attn}"),
    ("up.{up_level}.upsample.conv", "up_blocks.{up_level}.upsamplers.0.conv"),
)
SUBMODULES: dict[str, tuple[tuple[str, str], ...]] = {
    "resnet": (
        ("norm1", "norm1"),
        ("conv1", "conv1"),
        ("temb_proj", "time_emb_proj"),
        ("norm2", "norm2"),
        ("conv2", "conv2"),
        ("nin_shortcut", "conv_shortcut"),
    ),
    # Attention q/k/v/proj_out are 1x1 convolutions in the original and Linear layers in diffusers.
    "attn": (("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")),
}
# Diffusers < 0.15 named the attention projections query/key/value/proj_attn; hub checkpoints still use them.
LEGACY_DIFFUSERS_ATTN = (("q", "query"), ("k", "key"), ("v", "value"), ("proj_out", "proj_attn"))
# The first component of each side's top-level modules: enough to tell the layouts apart.
_ROOTS = {
    side: {p[i].split(".")[0] for p in KEY_PATTERNS if not p[i].startswith("conv_")}
    for i, side in enumerate(_SIDES)
}
_LEVEL_KEY = {"original": r"down\.(\d+)\.", "diffusers": r"down_blocks\.(\d+)\."}


def _names(kind: str, side: KeyLayout) -> dict[str, str]:
    """Sub-module name on `side` -> name on the other side (legacy diffusers names included)."""
    pairs = SUBMODULES[kind]
    if side == "original":
        return dict(pairs)
    legacy = LEGACY_DIFFUSERS_ATTN if kind == "attn" else ()
    return {d: o for o, d in (*pairs, *legacy)}


def _compile(template: str, side: KeyLayout) -> re.Pattern:
    parts = re.split(r"(\{\w+\})", template)
    regex = ""
    for part in parts:
        if part in ("{level}", "{j}", "{up_level}"):
            regex += rf"(?P<{part[1:-1]}>\d+)"
        elif part in ("{resnet}", "{attn}"):
            names = sorted(_names(part[1:-1], side), key=len, reverse=True)
            regex += f"(?P<{part[1:-1]}>" + "|".join(map(re.escape, names)) + ")"
        else:
            regex += re.escape(part)
    return re.compile(regex)


_RULES = {
    side: [(_compile(pair[i], side), pair[1 - i]) for pair in KEY_PATTERNS] for i, side in enumerate(_SIDES)
}


class KeyLayoutError(DDIMError):
    """A state dict that is not a DDPM U-Net in the layout it was read as."""


def strip_wrapper_prefixes(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Drop "module." (DataParallel) and "_orig_mod." (torch.compile) prefixes from every key."""
    out = {}
    for key, value in sd.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def key_layout(keys: Any) -> KeyLayout | None:
    """ "original" or "diffusers" from a U-Net's keys (wrapper prefixes ignored); None if neither."""
    roots = {k.split(".")[0] for k in strip_wrapper_prefixes(dict.fromkeys(keys))}
    for side in _SIDES:
        if roots & _ROOTS[side]:
            return side
    return None


def rename_key(key: str, source: KeyLayout, num_levels: int) -> tuple[str, bool]:
    """The other layout's name for `key`, and whether it is an attention projection weight (conv vs Linear)."""
    module, _, param = key.rpartition(".")
    for pattern, target in _RULES[source]:
        m = pattern.fullmatch(module)
        if m is None:
            continue
        values = m.groupdict()
        original_attn = values.get("attn") if source == "original" else None
        if "up_level" in values:
            values["up_level"] = num_levels - 1 - int(values["up_level"])
        for kind in ("resnet", "attn"):
            if kind in values:
                values[kind] = _names(kind, source)[values[kind]]
        original_attn = original_attn or (values.get("attn") if source == "diffusers" else None)
        is_projection = original_attn not in (None, "norm") and param == "weight"
        return f"{target.format(**values)}.{param}", is_projection
    raise KeyLayoutError(f"tensor {key!r} is not part of a DDPM U-Net in the {source} layout.")


def _num_levels(sd: Mapping[str, Any], source: KeyLayout) -> int:
    levels = {int(m.group(1)) for k in sd if (m := re.match(_LEVEL_KEY[source], k))}
    if not levels:
        raise KeyLayoutError(
            f"no down-sampling levels found in the state dict (keys like {_LEVEL_KEY[source]!r})."
        )
    return max(levels) + 1


def _convert(sd: Mapping[str, torch.Tensor], source: KeyLayout) -> dict[str, torch.Tensor]:
    sd = strip_wrapper_prefixes(sd)
    num_levels = _num_levels(sd, source)
    out = {}
    for key, value in sd.items():
        new_key, is_projection = rename_key(key, source, num_levels)
        if is_projection:  # (out, in, 1, 1) conv weight <-> (out, in) Linear weight
            value = (
                value.reshape(value.shape[:2]) if source == "original" else value.reshape(*value.shape, 1, 1)
            )
        out[new_key] = value
    return out


def original_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original-layout (DDPM/DDIM, our UNet) state dict to diffusers UNet2DModel names."""
    return _convert(sd, "original")


def diffusers_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers UNet2DModel state dict (DDPM architecture) to the original layout; also reads the
    pre-0.15 attention names (query/key/value/proj_attn)."""
    return _convert(sd, "diffusers")
