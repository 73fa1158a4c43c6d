"""Checkpoint files -> original-layout U-Net weights plus the config that fits them.

Formats: our Lightning .ckpt (`net.` / `ema_net.` weights and hyper-parameters), an original DDPM/DDIM
state dict or the DDIM repo's list [model, optimizer, epoch, step, ema] (.ckpt/.pt/.pth/.bin, "module."
prefixes allowed), a diffusers UNet2DModel folder (config.json + diffusion_pytorch_model.{safetensors,bin})
or such a weights file alone, a diffusers pipeline folder (its unet/, and the schedule, prediction type and
variance from its scheduler/), and our safetensors export (its metadata holds the hyper-parameters).

Every file is read with torch.load(weights_only=True) (`safe_load`): a checkpoint is data, and unpickling
anything else can run code. A file that holds more than tensors and plain containers is refused with the
two lines that re-save it safely.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from ddim.checkpoints.interop import record_from_metadata, record_from_scheduler
from ddim.checkpoints.unet_config import (
    check_diffusers_config,
    config_from_record,
    diffusers_resolution,
    infer_unet_config,
)
from ddim.errors import DDIMError
from ddim.nets.convert import diffusers_to_original, key_layout, strip_wrapper_prefixes
from ddim.nets.unet import UNet

Layout = Literal["original", "diffusers", "lightning"]

# The attribute names of ddim.training.module.DiffusionModule's two networks, as they prefix its state dict.
NET_PREFIX, EMA_PREFIX = "net.", "ema_net."
# Keys that EMA wrappers store next to the weights (torch.optim.swa_utils.AveragedModel) and the UNet has none of.
_NON_WEIGHT_KEYS = ("n_averaged",)

CKPT_HINT = (
    "pass ckpt=/path/to/checkpoint (a Lightning .ckpt from train.py, an original DDPM/DDIM .ckpt/.pth, "
    "or a diffusers UNet2DModel folder with config.json)"
)


class CheckpointError(DDIMError):
    """A checkpoint file that cannot be used: missing, empty, damaged, unsafe or not a DDPM U-Net."""


@dataclass
class Checkpoint:
    """What `read_checkpoint` found: original-layout weights and the UNet config that fits them."""

    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]
    layout: Layout
    ema: bool | None  # True/False when the file held both weight sets; None when it held only one
    # Lightning hyper-parameters (schedule, ...); None for other checkpoints.
    hyper_parameters: dict[str, Any] | None = field(default=None)


def _corrupt(path: Path, err: Exception) -> CheckpointError:
    text = str(err)
    # torch's weights-only failures open with advice to retry with weights_only=False, which is wrong for a
    # damaged file (and unsafe); the unpickler's own finding follows its "WeightsUnpickler error:" marker.
    finding = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    detail = (finding.group(1) if finding else (text.strip().splitlines() or [""])[0]).strip()[:200]
    return CheckpointError(
        f"could not read checkpoint {path}: {type(err).__name__}{': ' + detail if detail else ''}. "
        "The file is corrupt, truncated or not a PyTorch/safetensors checkpoint; re-download or re-save it."
    )


def _unsafe(path: Path, err: Exception) -> CheckpointError:
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    what = f" ({found.group(1)})" if found else ""
    return CheckpointError(
        f"{path} holds Python objects besides tensors{what}; unpickling them can run code, so it is not loaded. "
        "If you trust the file, re-save its tensors in a Python session: "
        f"c = torch.load('{path.name}', weights_only=False); "
        "torch.save({'state_dict': c['state_dict'], 'hyper_parameters': {k: c['hyper_parameters'][k] "
        "for k in ('net', 'schedule')}}, 'safe.ckpt') for a Lightning checkpoint (a state dict alone: "
        "torch.save(state_dict, 'weights.pt')), and pass that file."
    )


def safe_load(path: str | Path) -> Any:
    """torch.load(path, weights_only=True) on CPU, with one clear CheckpointError for an empty, damaged or
    unsafe file (one whose unpickling would need Python objects besides tensors and plain containers)."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise CheckpointError(
                f"checkpoint {path} is empty (0 bytes): its save was interrupted or the copy failed. "
                "Use another checkpoint (e.g. an earlier step_*.ckpt) or copy the file again."
            )
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint not found: {path}; {CKPT_HINT}") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # Damaged files also end here, but only a zip archive whose pickle asks for globals is "unsafe".
        if zipfile.is_zipfile(path) and "weights only" in str(e).lower():
            raise _unsafe(path, e) from e
        raise _corrupt(path, e) from e
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError/EOFError/... for damaged files
        raise _corrupt(path, e) from e


def _load_weights_file(path: Path) -> tuple[Any, dict[str, str] | None]:
    """(what the file holds, its safetensors metadata or None)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {key: f.get_tensor(key) for key in f.keys()}, f.metadata()
        except Exception as e:  # noqa: BLE001 - SafetensorsError and OSError for damaged files
            raise _corrupt(path, e) from e
    return safe_load(path), None


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def detect_layout(obj: Any) -> Layout:
    """Which key layout a checkpoint uses: "original" (DDPM/DDIM, our UNet), "diffusers" or "lightning".

    Accepts a state dict, a whole Lightning checkpoint (dict with "state_dict"), or a DDIM-repo list
    [model_sd, ..., ema_sd]. "module." prefixes are ignored.
    """
    if isinstance(obj, (list, tuple)):
        tensor_dicts = [e for e in obj if _is_tensor_dict(e)]
        if not tensor_dicts:
            raise CheckpointError(
                "unknown checkpoint layout: a list without any state dict of tensors; " + CKPT_HINT
            )
        return detect_layout(tensor_dicts[0])
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"unknown checkpoint layout: expected a dict of tensors, got {type(obj).__name__}; {CKPT_HINT}"
        )
    if isinstance(obj.get("state_dict"), Mapping):
        return "lightning"
    keys = list(strip_wrapper_prefixes(obj))
    if any(k.startswith((NET_PREFIX, EMA_PREFIX)) for k in keys):
        return "lightning"
    layout = key_layout(keys)
    if layout is None:
        raise CheckpointError(
            f"unknown checkpoint layout (first keys: {keys[:5]}); expected original DDPM/DDIM keys (temb.dense.0, "
            f"down.0.block.0, ...), diffusers UNet2DModel keys (time_embedding, down_blocks, ...) or a Lightning "
            f"checkpoint ({NET_PREFIX}, {EMA_PREFIX}); {CKPT_HINT}"
        )
    return layout


def _lightning_weights(
    ckpt: Mapping[str, Any], prefer_ema: bool
) -> tuple[dict[str, torch.Tensor], bool | None]:
    """The net or ema_net weights of a Lightning checkpoint (or its bare state dict), prefixes removed."""
    sd = strip_wrapper_prefixes(ckpt["state_dict"] if isinstance(ckpt.get("state_dict"), Mapping) else ckpt)
    has_ema = any(k.startswith(EMA_PREFIX) for k in sd)
    prefix = EMA_PREFIX if prefer_ema and has_ema else NET_PREFIX
    part = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    part = {k: v for k, v in strip_wrapper_prefixes(part).items() if k not in _NON_WEIGHT_KEYS}
    if not part:
        raise CheckpointError(f"the Lightning checkpoint has no tensors under {prefix!r}; {CKPT_HINT}")
    return part, (prefix == EMA_PREFIX) if has_ema else None


def _select_state_dict(
    obj: Any, prefer_ema: bool
) -> tuple[dict[str, torch.Tensor], Layout, bool | None, Any]:
    """(state dict, source layout, ema flag, Lightning hyper-parameters) from whatever a file held."""
    if isinstance(obj, (list, tuple)):
        # DDIM repo: [model, optimizer, epoch, step, ema] when EMA is on, otherwise without the last entry.
        candidates = [e for e in obj if _is_tensor_dict(e)]
        if not candidates:
            raise CheckpointError("the checkpoint is a list without any state dict of tensors; " + CKPT_HINT)
        sd = strip_wrapper_prefixes(candidates[-1] if prefer_ema else candidates[0])
        ema = prefer_ema if len(candidates) > 1 else None
        return sd, detect_layout(sd), ema, None
    layout = detect_layout(obj)
    if layout == "lightning":
        sd, ema = _lightning_weights(obj, prefer_ema)
        hparams = obj.get("hyper_parameters") if isinstance(obj.get("state_dict"), Mapping) else None
        return sd, "lightning", ema, dict(hparams) if isinstance(hparams, Mapping) else None
    sd = {k: v for k, v in strip_wrapper_prefixes(obj).items() if torch.is_tensor(v)}
    return sd, layout, None, None


def _diffusers_folder_files(folder: Path) -> tuple[Path, Path]:
    if not (folder / "config.json").is_file() and (folder / "unet" / "config.json").is_file():
        folder = folder / "unet"  # a saved pipeline keeps its UNet in a subfolder
    config = folder / "config.json"
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (folder / name).is_file() and config.is_file():
            return config, folder / name
    raise CheckpointError(
        f"{folder} is a folder but not a diffusers UNet2DModel folder (needs config.json and "
        f"diffusion_pytorch_model.safetensors or .bin); {CKPT_HINT}"
    )


def _read_json(config_path: Path) -> dict[str, Any]:
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"could not read {config_path}: {e}; re-download or re-save the model.") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path} holds no JSON object; re-download or re-save the model.")
    return config


def _diffusers_config(config_path: Path) -> dict[str, Any]:
    config = _read_json(config_path)
    check_diffusers_config(config)
    return config


def _pipeline_scheduler(weights: Path) -> dict[str, Any] | None:
    """The scheduler config of the pipeline folder a UNet's weights sit in (<root>/unet/ beside
    <root>/scheduler/ and <root>/model_index.json, as diffusers saves pipelines), if any."""
    root = weights.parent.parent
    config = root / "scheduler" / "scheduler_config.json"
    if weights.parent.name != "unet" or not (root / "model_index.json").is_file() or not config.is_file():
        return None
    return _read_json(config)


def read_checkpoint(path: str | Path, resolution: int | None = None, prefer_ema: bool = True) -> Checkpoint:
    """Read any supported checkpoint (see the module docstring) into original-layout weights plus a fitting
    UNet config: the recorded one for our checkpoints, one inferred from the tensors for foreign files.
    `prefer_ema` picks the EMA weights where a file holds both sets."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}; {CKPT_HINT}")
    config_path = path.with_name("config.json")
    if path.is_dir():
        config_path, path = _diffusers_folder_files(path)
    diffusers_config = None
    if config_path.is_file() and path.name.startswith("diffusion_pytorch_model."):
        diffusers_config = _diffusers_config(config_path)

    contents, metadata = _load_weights_file(path)
    sd, layout, ema, hparams = _select_state_dict(contents, prefer_ema)
    # Our safetensors export carries the hyper-parameters a Lightning checkpoint would.
    hparams = hparams if hparams is not None else record_from_metadata(metadata)
    if key_layout(sd) == "diffusers":
        if layout == "original":  # a DDIM list can only hold original keys; anything else is a diffusers file
            layout = "diffusers"
        sd = diffusers_to_original(sd)
    if hparams is not None and isinstance(hparams.get("net"), Mapping):
        config = config_from_record(hparams["net"], resolution)
    else:
        if resolution is None and diffusers_config is not None:
            resolution = diffusers_resolution(diffusers_config)
        config = infer_unet_config(sd, resolution)
        if diffusers_config is not None:
            config["dropout"] = float(diffusers_config.get("dropout", 0.0))
            # A pipeline folder's scheduler says the schedule, what the network predicts and the variance.
            scheduler = _pipeline_scheduler(path)
            if scheduler is not None:
                hparams = {
                    k: v for k, v in record_from_scheduler(scheduler, config).hparams().items() if k != "net"
                }
    return Checkpoint(state_dict=sd, config=config, layout=layout, ema=ema, hyper_parameters=hparams)


def _fmt(config: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in config.items())


def build_unet(sd: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> UNet:
    """UNet(**config) with `sd` loaded, in eval mode; names missing/unexpected tensors and shape mismatches."""
    try:
        model = UNet(**config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot build a UNet from config {dict(config)}: {e}") from e
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint tensors do not match UNet({_fmt(config)}): missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''} ({len(missing)} in all), unexpected {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)} in all). Check the config (ch_mult, "
            "num_res_blocks, attn_resolutions, resolution)."
        )
    for key, tensor in expected.items():
        if sd[key].shape != tensor.shape:
            raise CheckpointError(
                f"shape mismatch for tensor {key!r}: checkpoint has {tuple(sd[key].shape)}, UNet({_fmt(config)}) "
                f"expects {tuple(tensor.shape)}. Check the config (ch, ch_mult, in/out channels)."
            )
    model.load_state_dict(sd, strict=True)
    return model.eval()


def load_unet(
    path: str | Path, resolution: int | None = None, prefer_ema: bool = True
) -> tuple[UNet, dict[str, Any]]:
    """Load a UNet (eval mode, fp32, CPU) from any supported checkpoint; returns (model, UNet kwargs).

    All failures a user can fix raise `DDIMError` (CheckpointError) with what to do.
    """
    ckpt = read_checkpoint(path, resolution=resolution, prefer_ema=prefer_ema)
    return build_unet(ckpt.state_dict, ckpt.config), ckpt.config
