"""A checkpoint in the formats others load: a diffusers pipeline folder, or one safetensors file.

diffusers folder (`DDIMPipeline.from_pretrained(DIR)`, `DDPMPipeline.from_pretrained(DIR)`):

    DIR/model_index.json
    DIR/unet/config.json, DIR/unet/diffusion_pytorch_model.safetensors   (UNet2DModel layout)
    DIR/scheduler/scheduler_config.json                                  (DDPMScheduler: schedule, prediction
                                                                          type, variance; no x0 clipping)

safetensors file: our U-Net's own (original DDPM) key layout, with the U-Net config, schedule,
parameterization and variance as JSON in the file's metadata, so `python src/eval.py ckpt=FILE` reads the
model exactly as a Lightning checkpoint. Both read the weights through `read_checkpoint` (EMA by default)
and rename them with `ddim.nets.convert`: one conversion for import and export. A folder or file is written
atomically, and only after every setting was checked.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ddim.checkpoints.files import read_checkpoint
from ddim.checkpoints.interop import (
    ModelRecord,
    check_exportable,
    diffusers_unet_config,
    pipeline_index,
    safetensors_metadata,
    scheduler_config,
)
from ddim.errors import DDIMError
from ddim.io import atomic_directory, write_bytes, write_json
from ddim.nets.convert import original_to_diffusers

log = logging.getLogger(__name__)

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


class ExportError(DDIMError):
    """An export destination that would lose data or cannot be written."""


def _tensor_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)


def check_destination(out: Path, overwrite: bool, folder: bool) -> None:
    """Refuse to replace existing results unless asked, and a destination of the wrong kind always."""
    if folder and out.is_file():
        raise ExportError(f"out={out} is a file; the diffusers export writes a folder: choose another out=.")
    if not folder and out.is_dir():
        raise ExportError(
            f"out={out} is a folder; format=safetensors writes one file, e.g. out={out}/model.safetensors."
        )
    if not folder and out.suffix != ".safetensors":
        raise ExportError(
            f"out={out}: format=safetensors writes a .safetensors file; name it e.g. model.safetensors."
        )
    occupied = out.is_file() or (out.is_dir() and any(out.iterdir()))
    if occupied and not overwrite:
        raise ExportError(
            f"out={out} already exists and is not empty; choose another out= or add overwrite=true."
        )


def load_record(ckpt: str | Path, use_ema: bool) -> tuple[dict[str, torch.Tensor], ModelRecord, bool | None]:
    """(original-layout weights, what the model is, whether they are the EMA weights) of any checkpoint we
    read; files without a recorded schedule get DDPM's, as evaluation gives them."""
    checkpoint = read_checkpoint(ckpt, prefer_ema=use_ema)
    if not use_ema and checkpoint.ema is None and checkpoint.layout == "lightning":
        log.warning("use_ema=false, but %s holds one set of weights: exporting those.", ckpt)
    if not checkpoint.hyper_parameters or "schedule" not in checkpoint.hyper_parameters:
        log.info("%s records no noise schedule: exporting DDPM's (linear 1e-4..0.02, T=1000).", ckpt)
    record = ModelRecord.from_hparams(checkpoint.config, checkpoint.hyper_parameters)
    return checkpoint.state_dict, record, checkpoint.ema


def export_diffusers(
    ckpt: str | Path, out: str | Path, use_ema: bool = True, spacing: str = "uniform", overwrite: bool = False
) -> Path:
    """Write the diffusers pipeline folder of a checkpoint; returns the folder."""
    out = Path(out).expanduser()
    check_destination(out, overwrite, folder=True)
    state_dict, record, ema = load_record(ckpt, use_ema)
    scheduler = scheduler_config(record, spacing)  # refuses what diffusers cannot express, before writing
    weights = _tensor_bytes(original_to_diffusers(state_dict), {"format": "pt"})
    with atomic_directory(out) as folder:
        write_json(folder / "model_index.json", pipeline_index())
        write_json(folder / "unet" / "config.json", diffusers_unet_config(record.net))
        write_bytes(folder / "unet" / WEIGHTS_NAME, weights)
        write_json(folder / "scheduler" / "scheduler_config.json", scheduler)
    T = record.schedule["num_timesteps"]
    log.info(
        "Exported %s (%s weights, %s, %s, %s betas, T=%d) to %s: DDIMPipeline.from_pretrained(%r) or "
        "DDPMPipeline.from_pretrained(%r).",
        ckpt,
        {True: "EMA", False: "raw", None: "its only"}[ema],
        scheduler["prediction_type"],
        scheduler["variance_type"],
        scheduler["beta_schedule"],
        T,
        out,
        str(out),
        str(out),
    )
    if spacing == "uniform":
        log.info(
            "DDIMPipeline with num_inference_steps=S takes our uniform steps floor(i*T/S) when S divides T=%d "
            "(diffusers' 'leading' spacing is i*(T//S)).",
            T,
        )
    if record.variance == "learned_range":
        log.warning(
            "The U-Net outputs a learned variance (2x channels): DDPMPipeline uses it; DDIMPipeline cannot run "
            "it (diffusers' DDIMScheduler does not split the output)."
        )
    return out


def export_safetensors(
    ckpt: str | Path, out: str | Path, use_ema: bool = True, overwrite: bool = False
) -> Path:
    """Write one safetensors file: our key layout, the model's record in the metadata; returns the file."""
    out = Path(out).expanduser()
    check_destination(out, overwrite, folder=False)
    state_dict, record, ema = load_record(ckpt, use_ema)
    write_bytes(out, _tensor_bytes(state_dict, safetensors_metadata(record, ema)))
    log.info(
        "Exported %s (%s weights, %s, %s) to %s: python src/eval.py ckpt=%s",
        ckpt,
        {True: "EMA", False: "raw", None: "its only"}[ema],
        record.parameterization,
        record.variance,
        out,
        out,
    )
    return out


__all__ = ["ExportError", "check_exportable", "export_diffusers", "export_safetensors", "load_record"]
