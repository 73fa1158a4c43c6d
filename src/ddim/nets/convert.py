"""Checkpoint import: the original DDPM/DDIM key layout, diffusers UNet2DModel, and our Lightning checkpoints.

Everything here is a pure function on state dicts except `read_checkpoint` / `load_unet`, which read files.
The original layout is the one `ddim.nets.unet.UNet` uses, so every import ends as an original-layout state
dict plus the UNet keyword arguments that reproduce it. The network structure (levels, channel multipliers,
residual blocks per level, where attention sits) is read from the tensors themselves, so any DDPM-style
U-Net converts, not only the CIFAR10 one.
"""

from __future__ import annotations

import inspect
import json
import math
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ddim.errors import DDIMError
from ddim.nets.unet import UNet

Layout = Literal["original", "diffusers", "lightning"]

# Wrappers that only prepend a prefix to every key: DataParallel/DDP ("module.") and torch.compile ("_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Keys that EMA wrappers store next to the weights (torch.optim.swa_utils.AveragedModel) and the UNet has none of.
_NON_WEIGHT_KEYS = ("n_averaged",)

_RESNET_TO_DIFFUSERS = {
    "norm1": "norm1",
    "conv1": "conv1",
    "temb_proj": "time_emb_proj",
    "norm2": "norm2",
    "conv2": "conv2",
    "nin_shortcut": "conv_shortcut",
}
_RESNET_TO_ORIGINAL = {v: k for k, v in _RESNET_TO_DIFFUSERS.items()}
_ATTN_TO_DIFFUSERS = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
# Diffusers < 0.15 named the attention projections query/key/value/proj_attn; hub checkpoints still use them.
_ATTN_TO_ORIGINAL = {
    **{v: k for k, v in _ATTN_TO_DIFFUSERS.items()},
    "query": "q",
    "key": "k",
    "value": "v",
    "proj_attn": "proj_out",
}
_TOP_TO_DIFFUSERS = {
    "temb.dense.0": "time_embedding.linear_1",
    "temb.dense.1": "time_embedding.linear_2",
    "conv_in": "conv_in",
    "norm_out": "conv_norm_out",
    "conv_out": "conv_out",
}
_TOP_TO_ORIGINAL = {v: k for k, v in _TOP_TO_DIFFUSERS.items()}
_MID_TO_DIFFUSERS = {"block_1": "resnets.0", "attn_1": "attentions.0", "block_2": "resnets.1"}
_MID_TO_ORIGINAL = {v: k for k, v in _MID_TO_DIFFUSERS.items()}

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
_DDPM_DIFFUSERS_FIELDS: dict[str, Any] = {
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

_CKPT_HINT = (
    "pass ckpt=/path/to/checkpoint (a Lightning .ckpt from train.py, an original DDPM/DDIM .ckpt/.pth, "
    "or a diffusers UNet2DModel folder with config.json)"
)


# ----------------------------------------------------------------------------------------------------------
# Key layouts
# ----------------------------------------------------------------------------------------------------------


def strip_wrapper_prefixes(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Drop "module." (DataParallel) and "_orig_mod." (torch.compile) prefixes from every key."""
    out = {}
    for key, value in sd.items():
        while key.startswith(_WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def detect_layout(sd: Any) -> Layout:
    """Which key layout a checkpoint uses: "original" (DDPM/DDIM, our UNet), "diffusers" or "lightning".

    Accepts a state dict, a whole Lightning checkpoint (dict with "state_dict"), or a DDIM-repo list
    [model_sd, ..., ema_sd]. "module." prefixes are ignored.
    """
    if isinstance(sd, (list, tuple)):
        tensor_dicts = [e for e in sd if _is_tensor_dict(e)]
        if not tensor_dicts:
            raise DDIMError(
                "unknown checkpoint layout: a list without any state dict of tensors; " + _CKPT_HINT
            )
        return detect_layout(tensor_dicts[0])
    if not isinstance(sd, Mapping):
        raise DDIMError(
            f"unknown checkpoint layout: expected a dict of tensors, got {type(sd).__name__}; {_CKPT_HINT}"
        )
    if isinstance(sd.get("state_dict"), Mapping):
        return "lightning"
    keys = list(strip_wrapper_prefixes(sd))
    if any(k.startswith(("net.", "ema_net.")) for k in keys):
        return "lightning"
    if any(k.startswith(("temb.dense.", "down.", "mid.", "up.")) for k in keys):
        return "original"
    if any(k.startswith(("time_embedding.", "down_blocks.", "mid_block.", "up_blocks.")) for k in keys):
        return "diffusers"
    raise DDIMError(
        f"unknown checkpoint layout (first keys: {keys[:5]}); expected original DDPM/DDIM keys (temb.dense.0, "
        f"down.0.block.0, ...), diffusers UNet2DModel keys (time_embedding, down_blocks, ...) or a Lightning "
        f"checkpoint (net., ema_net.); {_CKPT_HINT}"
    )


def _num_levels(keys: list[str], pattern: str) -> int:
    levels = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    if not levels:
        raise DDIMError(
            f"no down-sampling levels found in the state dict (keys like {pattern!r}); {_CKPT_HINT}"
        )
    return max(levels) + 1


def _unknown_key(key: str, layout: str) -> DDIMError:
    return DDIMError(f"tensor {key!r} is not part of a DDPM U-Net in the {layout} layout; {_CKPT_HINT}")


def _original_to_diffusers_key(key: str, num_levels: int) -> tuple[str, bool]:
    """Diffusers name for an original key, and whether the tensor is a 1x1-conv attention weight."""
    module, _, param = key.rpartition(".")
    if module in _TOP_TO_DIFFUSERS:
        return f"{_TOP_TO_DIFFUSERS[module]}.{param}", False
    if m := re.fullmatch(r"(down|up)\.(\d+)\.block\.(\d+)\.(\w+)", module):
        side, level, idx, sub = m.groups()
        if sub in _RESNET_TO_DIFFUSERS:
            lvl = int(level) if side == "down" else num_levels - 1 - int(level)
            return f"{side}_blocks.{lvl}.resnets.{idx}.{_RESNET_TO_DIFFUSERS[sub]}.{param}", False
    if m := re.fullmatch(r"(down|up)\.(\d+)\.attn\.(\d+)\.(\w+)", module):
        side, level, idx, sub = m.groups()
        if sub in _ATTN_TO_DIFFUSERS:
            lvl = int(level) if side == "down" else num_levels - 1 - int(level)
            return f"{side}_blocks.{lvl}.attentions.{idx}.{_ATTN_TO_DIFFUSERS[sub]}.{param}", sub != "norm"
    if m := re.fullmatch(r"down\.(\d+)\.downsample\.conv", module):
        return f"down_blocks.{m.group(1)}.downsamplers.0.conv.{param}", False
    if m := re.fullmatch(r"up\.(\d+)\.upsample\.conv", module):
        return f"up_blocks.{num_levels - 1 - int(m.group(1))}.upsamplers.0.conv.{param}", False
    if m := re.fullmatch(r"mid\.(block_1|block_2)\.(\w+)", module):
        if m.group(2) in _RESNET_TO_DIFFUSERS:
            return (
                f"mid_block.{_MID_TO_DIFFUSERS[m.group(1)]}.{_RESNET_TO_DIFFUSERS[m.group(2)]}.{param}",
                False,
            )
    if m := re.fullmatch(r"mid\.attn_1\.(\w+)", module):
        if m.group(1) in _ATTN_TO_DIFFUSERS:
            sub = m.group(1)
            return f"mid_block.attentions.0.{_ATTN_TO_DIFFUSERS[sub]}.{param}", sub != "norm"
    raise _unknown_key(key, "original")


def _diffusers_to_original_key(key: str, num_levels: int) -> tuple[str, bool]:
    """Original name for a diffusers key, and whether the tensor is a Linear attention weight."""
    module, _, param = key.rpartition(".")
    if module in _TOP_TO_ORIGINAL:
        return f"{_TOP_TO_ORIGINAL[module]}.{param}", False
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)", module):
        side, level, idx, sub = m.groups()
        if sub in _RESNET_TO_ORIGINAL:
            lvl = int(level) if side == "down" else num_levels - 1 - int(level)
            return f"{side}.{lvl}.block.{idx}.{_RESNET_TO_ORIGINAL[sub]}.{param}", False
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.attentions\.(\d+)\.(\w+(?:\.0)?)", module):
        side, level, idx, sub = m.groups()
        if sub in _ATTN_TO_ORIGINAL:
            lvl = int(level) if side == "down" else num_levels - 1 - int(level)
            return f"{side}.{lvl}.attn.{idx}.{_ATTN_TO_ORIGINAL[sub]}.{param}", sub != "group_norm"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", module):
        return f"down.{m.group(1)}.downsample.conv.{param}", False
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv", module):
        return f"up.{num_levels - 1 - int(m.group(1))}.upsample.conv.{param}", False
    if m := re.fullmatch(r"mid_block\.(resnets\.[01])\.(\w+)", module):
        if m.group(2) in _RESNET_TO_ORIGINAL:
            return f"mid.{_MID_TO_ORIGINAL[m.group(1)]}.{_RESNET_TO_ORIGINAL[m.group(2)]}.{param}", False
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(\w+(?:\.0)?)", module):
        sub = m.group(1)
        if sub in _ATTN_TO_ORIGINAL:
            return f"mid.attn_1.{_ATTN_TO_ORIGINAL[sub]}.{param}", sub != "group_norm"
    raise _unknown_key(key, "diffusers")


def original_to_diffusers(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an original-layout (DDPM/DDIM, our UNet) state dict to diffusers UNet2DModel names.

    Attention q/k/v/proj_out are 1x1 convolutions here and Linear layers in diffusers: weights lose their
    trailing (1, 1). Up levels are numbered from the top here (up.0 is full resolution) and from the bottom
    in diffusers (up_blocks.0 is the lowest resolution).
    """
    sd = strip_wrapper_prefixes(sd)
    num_levels = _num_levels(list(sd), r"down\.(\d+)\.")
    out = {}
    for key, value in sd.items():
        new_key, is_attn_weight = _original_to_diffusers_key(key, num_levels)
        if is_attn_weight and key.endswith(".weight"):
            value = value.reshape(value.shape[0], value.shape[1])
        out[new_key] = value
    return out


def diffusers_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers UNet2DModel state dict (DDPM architecture) to the original layout; see
    `original_to_diffusers`. Also reads the pre-0.15 attention names (query/key/value/proj_attn)."""
    sd = strip_wrapper_prefixes(sd)
    num_levels = _num_levels(list(sd), r"down_blocks\.(\d+)\.")
    out = {}
    for key, value in sd.items():
        new_key, is_attn_weight = _diffusers_to_original_key(key, num_levels)
        if is_attn_weight and key.endswith(".weight"):
            value = value.reshape(*value.shape, 1, 1)
        out[new_key] = value
    return out


# ----------------------------------------------------------------------------------------------------------
# Config inference
# ----------------------------------------------------------------------------------------------------------


def default_resolution(num_levels: int) -> int:
    """Image size assumed when a checkpoint does not say: the published DDPM config with that many levels
    (4 -> 32, 5 -> 64, 6 -> 256), otherwise a 4x4 lowest level, 2 ** (num_levels + 1)."""
    return _DEFAULT_RESOLUTION.get(num_levels, 2 ** (num_levels + 1))


def _unet_defaults() -> dict[str, Any]:
    params = inspect.signature(UNet.__init__).parameters
    return {name: p.default for name, p in params.items() if name != "self"}


def _attn_levels(resolution: int, attn_resolutions: Any, num_levels: int) -> list[int]:
    return [i for i in range(num_levels) if resolution // 2**i in set(attn_resolutions)]


def _config_from_hparams(net: Mapping[str, Any], resolution: int | None) -> dict[str, Any]:
    defaults = _unet_defaults()
    config = {**defaults, **{k: v for k, v in net.items() if k in defaults}}
    config["ch_mult"] = tuple(config["ch_mult"])
    config["attn_resolutions"] = tuple(config["attn_resolutions"])
    if resolution is not None and resolution != config["resolution"]:
        # Same tensors, other image size: keep attention at the same levels.
        levels = _attn_levels(config["resolution"], config["attn_resolutions"], len(config["ch_mult"]))
        config["attn_resolutions"] = tuple(resolution // 2**i for i in levels)
        config["resolution"] = resolution
    return config


def _lightning_parts(
    ckpt: Mapping[str, Any], prefer_ema: bool
) -> tuple[dict[str, torch.Tensor], bool | None]:
    """The net or ema_net weights of a Lightning checkpoint (or its bare state dict), prefixes removed."""
    sd = ckpt["state_dict"] if isinstance(ckpt.get("state_dict"), Mapping) else ckpt
    sd = strip_wrapper_prefixes(sd)
    has_ema = any(k.startswith("ema_net.") for k in sd)
    prefix = "ema_net." if prefer_ema and has_ema else "net."
    part = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    part = {k: v for k, v in strip_wrapper_prefixes(part).items() if k not in _NON_WEIGHT_KEYS}
    if not part:
        raise DDIMError(f"the Lightning checkpoint has no tensors under {prefix!r}; {_CKPT_HINT}")
    return part, (prefix == "ema_net.") if has_ema else None


def infer_unet_config(sd: Mapping[str, Any], resolution: int | None = None) -> dict[str, Any]:
    """UNet keyword arguments that reproduce a checkpoint's tensors.

    Lightning checkpoints (with hyper_parameters["net"]) use those. Otherwise the structure is read from the
    tensors: channels from conv_in/conv_out, ch_mult from each level's first conv, num_res_blocks from the
    first level, attention levels from which levels have attn tensors. `resolution` defaults to
    `default_resolution(levels)`. Dropout is not stored in weights: inferred configs use 0.0 (sampling runs
    in eval mode, where dropout does nothing).
    """
    if isinstance(sd, Mapping) and isinstance(sd.get("hyper_parameters"), Mapping):
        net = sd["hyper_parameters"].get("net")
        if isinstance(net, Mapping):
            return _config_from_hparams(net, resolution)
    layout = detect_layout(sd)
    if layout == "lightning":
        sd, _ = _lightning_parts(sd, prefer_ema=True)
        layout = detect_layout(sd)
    sd = diffusers_to_original(sd) if layout == "diffusers" else strip_wrapper_prefixes(sd)
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
            f"checkpoint lacks tensor {e.args[0]!r} needed to infer the U-Net config; {_CKPT_HINT}"
        ) from e
    if levels != list(range(len(levels))):
        raise DDIMError(f"checkpoint has down levels {levels}, expected 0..{len(levels) - 1}; {_CKPT_HINT}")
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
    for name, expected in _DDPM_DIFFUSERS_FIELDS.items():
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


# ----------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """What `read_checkpoint` found: original-layout weights and the UNet config that fits them."""

    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]
    layout: Layout
    ema: bool | None  # True/False when the file held both weight sets; None when it held only one
    # Lightning hyper-parameters (schedule, ...); None for other checkpoints.
    hyper_parameters: dict[str, Any] | None = field(default=None)


def _corrupt(path: Path, err: Exception) -> DDIMError:
    return DDIMError(
        f"could not read checkpoint {path}: {type(err).__name__}: {str(err).splitlines()[0][:200]}. "
        "The file is corrupt, truncated or not a PyTorch/safetensors checkpoint; re-download or re-save it."
    )


def _torch_load(path: Path) -> Any:
    """torch.load with weights_only=True: safe on untrusted files and enough for plain state dicts, DDIM lists
    and diffusers .bin files. Lightning .ckpt files may also hold optimizer/loop/callback state with Python
    objects that the weights-only unpickler rejects; only for a .ckpt zip archive (torch.save format) do we
    retry with weights_only=False, which runs pickle code: load only checkpoints you trust."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # Damaged or foreign files also end here (as "weights only load failed"), but they are no zip archive.
        if not (zipfile.is_zipfile(path) and "weights only" in str(e).lower()):
            raise _corrupt(path, e) from e
        if path.suffix != ".ckpt":
            raise DDIMError(
                f"{path} holds Python objects besides tensors, which torch.load(weights_only=True) refuses "
                "because unpickling them can run code. If you trust the file, save the model's state dict "
                "alone (torch.save(state_dict, 'weights.pt')) and pass that file."
            ) from e
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError/EOFError/... for damaged files
        raise _corrupt(path, e) from e
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise _corrupt(path, e) from e


def _load_weights_file(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - SafetensorsError and OSError for damaged files
            raise _corrupt(path, e) from e
    return _torch_load(path)


def _diffusers_folder_files(folder: Path) -> tuple[Path, Path]:
    if not (folder / "config.json").is_file() and (folder / "unet" / "config.json").is_file():
        folder = folder / "unet"  # a saved pipeline keeps its UNet in a subfolder
    config = folder / "config.json"
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (folder / name).is_file() and config.is_file():
            return config, folder / name
    raise DDIMError(
        f"{folder} is a folder but not a diffusers UNet2DModel folder (needs config.json and "
        f"diffusion_pytorch_model.safetensors or .bin); {_CKPT_HINT}"
    )


def _select_state_dict(
    obj: Any, prefer_ema: bool
) -> tuple[dict[str, torch.Tensor], Layout, bool | None, Any]:
    """(state dict, source layout, ema flag, Lightning hyper-parameters) from whatever a file held."""
    if isinstance(obj, (list, tuple)):
        # DDIM repo: [model, optimizer, epoch, step, ema] when EMA is on, otherwise without the last entry.
        candidates = [e for e in obj if _is_tensor_dict(e)]
        if not candidates:
            raise DDIMError("the checkpoint is a list without any state dict of tensors; " + _CKPT_HINT)
        sd = strip_wrapper_prefixes(candidates[-1] if prefer_ema else candidates[0])
        ema = prefer_ema if len(candidates) > 1 else None
        return sd, detect_layout(sd), ema, None
    layout = detect_layout(obj)
    if layout == "lightning":
        sd, ema = _lightning_parts(obj, prefer_ema)
        hparams = obj.get("hyper_parameters") if isinstance(obj.get("state_dict"), Mapping) else None
        return sd, "lightning", ema, dict(hparams) if isinstance(hparams, Mapping) else None
    sd = {k: v for k, v in strip_wrapper_prefixes(obj).items() if torch.is_tensor(v)}
    return sd, layout, None, None


def read_checkpoint(path: str | Path, resolution: int | None = None, prefer_ema: bool = True) -> Checkpoint:
    """Read any supported checkpoint into original-layout weights plus a fitting UNet config.

    Supported: our Lightning .ckpt (EMA weights when `prefer_ema`), an original DDPM/DDIM state dict or
    DDIM-repo list [model, ..., ema] (.ckpt/.pt/.pth/.bin, "module." prefixes allowed), a diffusers
    UNet2DModel folder (config.json + diffusion_pytorch_model.{safetensors,bin}) or weights file.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DDIMError(f"checkpoint not found: {path}; {_CKPT_HINT}")
    diffusers_config = None
    if path.is_dir():
        config_path, path = _diffusers_folder_files(path)
    else:
        config_path = path.with_name("config.json")
    if config_path.is_file() and path.name.startswith("diffusion_pytorch_model."):
        try:
            diffusers_config = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DDIMError(f"could not read {config_path}: {e}; re-download or re-save the model.") from e
        check_diffusers_config(diffusers_config)

    obj = _load_weights_file(path)
    sd, layout, ema, hparams = _select_state_dict(obj, prefer_ema)
    if detect_layout(sd) == "diffusers":
        if layout == "original":  # a DDIM list can only hold original keys; anything else is a diffusers file
            layout = "diffusers"
        sd = diffusers_to_original(sd)
    if hparams is not None and isinstance(hparams.get("net"), Mapping):
        config = _config_from_hparams(hparams["net"], resolution)
    else:
        if resolution is None and diffusers_config is not None:
            size = diffusers_config.get("sample_size")
            size = size[0] if isinstance(size, (list, tuple)) and len(set(size)) == 1 else size
            resolution = size if isinstance(size, int) else None
        config = infer_unet_config(sd, resolution)
        if diffusers_config is not None:
            config["dropout"] = float(diffusers_config.get("dropout", 0.0))
    return Checkpoint(state_dict=sd, config=config, layout=layout, ema=ema, hyper_parameters=hparams)


def build_unet(sd: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> UNet:
    """UNet(**config) with `sd` loaded, in eval mode; names missing/unexpected tensors and shape mismatches."""
    try:
        model = UNet(**config)
    except (TypeError, ValueError) as e:
        raise DDIMError(f"cannot build a UNet from config {dict(config)}: {e}") from e
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        raise DDIMError(
            f"checkpoint tensors do not match UNet({_fmt(config)}): missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''} ({len(missing)} in all), unexpected {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)} in all). Check the config (ch_mult, "
            "num_res_blocks, attn_resolutions, resolution)."
        )
    for key, tensor in expected.items():
        if sd[key].shape != tensor.shape:
            raise DDIMError(
                f"shape mismatch for tensor {key!r}: checkpoint has {tuple(sd[key].shape)}, UNet({_fmt(config)}) "
                f"expects {tuple(tensor.shape)}. Check the config (ch, ch_mult, in/out channels)."
            )
    model.load_state_dict(sd, strict=True)
    return model.eval()


def _fmt(config: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in config.items())


def load_unet(
    path: str | Path, resolution: int | None = None, prefer_ema: bool = True
) -> tuple[UNet, dict[str, Any]]:
    """Load a UNet (eval mode, fp32, CPU) from any supported checkpoint; returns (model, UNet kwargs).

    See `read_checkpoint` for the formats. All failures a user can fix raise `DDIMError` with what to do.
    """
    ckpt = read_checkpoint(path, resolution=resolution, prefer_ema=prefer_ema)
    return build_unet(ckpt.state_dict, ckpt.config), ckpt.config
