"""Checkpoints, above both `ddim.nets` (the network and its key layouts) and `ddim.training.module` (training):
file formats, layout detection, EMA selection, safe loading and rebuilding the U-Net."""

from ddim.checkpoints.files import (
    EMA_PREFIX,
    NET_PREFIX,
    Checkpoint,
    CheckpointError,
    build_unet,
    detect_layout,
    load_unet,
    read_checkpoint,
    safe_load,
)
from ddim.checkpoints.unet_config import (
    DIFFUSERS_DEFAULTS,
    check_diffusers_config,
    config_from_record,
    default_resolution,
    infer_unet_config,
)

__all__ = [
    "DIFFUSERS_DEFAULTS",
    "EMA_PREFIX",
    "NET_PREFIX",
    "Checkpoint",
    "CheckpointError",
    "build_unet",
    "check_diffusers_config",
    "config_from_record",
    "default_resolution",
    "detect_layout",
    "infer_unet_config",
    "load_unet",
    "read_checkpoint",
    "safe_load",
]
