"""Our model description in other formats, both directions, from one table per fact: diffusers'
UNet2DModel config and scheduler config, and the metadata of a plain safetensors file.

What a model is, beyond its weights (`ModelRecord`): the U-Net config, the noise schedule (make_betas'
arguments), what the network predicts and the reverse variance. diffusers names the same facts otherwise:

    ours                            diffusers (DDPMScheduler / DDIMScheduler config)
    schedule.kind linear | cosine   beta_schedule linear | squaredcos_cap_v2 (same formula, capped at 0.999)
    schedule.num_timesteps          num_train_timesteps (beta_start, beta_end alike)
    eps | x0 | v                    prediction_type epsilon | sample | v_prediction
    fixed_small | fixed_large       variance_type fixed_small | fixed_large
    learned_range                   variance_type learned_range (same interpolation of log beta, log beta_tilde)

Not expressible there, so refused with one line: the `mu` parameterization (diffusers' schedulers only read
eps, x0 or v) and our `learned` variance (a log-variance; diffusers' "learned" reads the output as a variance).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ddim.checkpoints.unet_config import DDPM_DIFFUSERS_FIELDS
from ddim.diffusion.parameterization import ModelSpec, check_parameterization, check_variance
from ddim.diffusion.schedule import schedule_config
from ddim.errors import DDIMError

PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
VARIANCE_TYPES = {
    "fixed_small": "fixed_small",
    "fixed_large": "fixed_large",
    "learned_range": "learned_range",
}
# diffusers computes these in the log domain (same variance): read, never written.
_VARIANCE_ALIASES = {"fixed_small_log": "fixed_small", "fixed_large_log": "fixed_large"}
BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}
# Our timestep rule -> diffusers' timestep_spacing. "uniform" is floor(i T / S); diffusers' "leading" is
# i (T // S): the same sequence when S divides T (ddim.diffusion.schedule.timestep_sequence).
SPACINGS = {"uniform": "leading", "leading": "leading", "trailing": "trailing"}
# The scheduler class the export writes: it carries variance_type, which DDIMScheduler has not;
# DDIMPipeline converts it to a DDIMScheduler itself (DDIMScheduler.from_config).
SCHEDULER_CLASS = "DDPMScheduler"
PIPELINE_CLASS = "DDPMPipeline"
# Written into config files; the layout (attention as to_q/to_k/to_v/to_out.0) is that of diffusers >= 0.15.
DIFFUSERS_VERSION = "0.27.0"


class InteropError(DDIMError):
    """A model setting another format cannot express, or a foreign config we cannot read faithfully."""


@dataclass(frozen=True)
class ModelRecord:
    """Everything but the weights: what a Lightning checkpoint's hyper-parameters hold for sampling."""

    net: dict[str, Any]
    schedule: dict[str, Any]
    parameterization: str = ModelSpec.parameterization
    variance: str = ModelSpec.variance

    @classmethod
    def from_hparams(cls, net: Mapping[str, Any], hparams: Mapping[str, Any] | None) -> ModelRecord:
        """A checkpoint's record; files that do not carry a schedule get DDPM's (make_betas' defaults)."""
        hparams = hparams or {}
        spec = ModelSpec.from_hparams(hparams)
        return cls(
            dict(net),
            schedule_config(**(hparams.get("schedule") or {})),
            spec.parameterization,
            spec.variance,
        )

    def hparams(self) -> dict[str, Any]:
        """As a Lightning checkpoint stores it (what evaluation reads)."""
        return {
            "net": dict(self.net),
            "schedule": dict(self.schedule),
            "parameterization": self.parameterization,
            "variance": self.variance,
        }


# ----------------------------------------------------------------------------------------------------------
# diffusers UNet2DModel


def diffusers_unet_config(net: Mapping[str, Any]) -> dict[str, Any]:
    """The UNet2DModel config.json that computes our U-Net `net` (UNet kwargs) with converted weights."""
    levels = len(net["ch_mult"])
    attn = [net["resolution"] // 2**i in set(net["attn_resolutions"]) for i in range(levels)]
    return {
        "_class_name": "UNet2DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": int(net["resolution"]),
        "in_channels": int(net["in_channels"]),
        "out_channels": int(net["out_channels"]),
        "block_out_channels": [int(net["ch"]) * int(m) for m in net["ch_mult"]],
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "layers_per_block": int(net["num_res_blocks"]),
        "attention_head_dim": None,  # one head over all channels, as DDPM's attention
        "dropout": float(net.get("dropout", 0.0)),
        **DDPM_DIFFUSERS_FIELDS,
    }


# ----------------------------------------------------------------------------------------------------------
# diffusers scheduler


def check_exportable(record: ModelRecord) -> None:
    """Refuse, in one line, what diffusers' schedulers cannot express."""
    check_parameterization(record.parameterization)
    check_variance(record.variance)
    if record.parameterization not in PREDICTION_TYPES:
        raise InteropError(
            f"model.parameterization={record.parameterization} (the network predicts the posterior mean) has no "
            f"diffusers prediction_type (only {', '.join(PREDICTION_TYPES.values())}): such a model cannot be "
            "exported to diffusers; use format=safetensors, which keeps it for our evaluation."
        )
    if record.variance not in VARIANCE_TYPES:
        raise InteropError(
            f"model.variance={record.variance} (the network outputs a log-variance) has no diffusers "
            "variance_type: diffusers' 'learned' reads the output as a variance, so its samples would be wrong; "
            "use format=safetensors, or train with model.variance=learned_range."
        )
    kind = record.schedule.get("kind", "linear")
    if kind not in BETA_SCHEDULES:
        raise InteropError(f"schedule kind {kind!r} has no diffusers beta_schedule (only linear, cosine).")


def scheduler_config(record: ModelRecord, spacing: str = "uniform") -> dict[str, Any]:
    """The DDPMScheduler config of a model: its schedule, prediction type and variance, no x0 clipping
    (our DDIM samplers do not clip), steps from our `spacing` rule (refused where diffusers has none)."""
    check_exportable(record)
    if spacing not in SPACINGS:
        raise InteropError(
            f"spacing={spacing} has no diffusers timestep_spacing (its schedulers know leading, trailing and "
            f"linspace): export with spacing=uniform (diffusers' leading, the same steps when S divides T) or "
            f"spacing=trailing, and for {spacing} steps sample with our samplers (sampler.skip_type={spacing})."
        )
    schedule = record.schedule
    return {
        "_class_name": SCHEDULER_CLASS,
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": int(schedule["num_timesteps"]),
        "beta_start": float(schedule["beta_start"]),
        "beta_end": float(schedule["beta_end"]),
        "beta_schedule": BETA_SCHEDULES[schedule["kind"]],
        "trained_betas": None,
        "prediction_type": PREDICTION_TYPES[record.parameterization],
        "variance_type": VARIANCE_TYPES[record.variance],
        "clip_sample": False,
        "clip_sample_range": 1.0,
        "thresholding": False,
        "timestep_spacing": SPACINGS[spacing],
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
    }


def _inverse(table: Mapping[str, str]) -> dict[str, str]:
    return {theirs: ours for ours, theirs in table.items()}


def record_from_scheduler(config: Mapping[str, Any], net: Mapping[str, Any]) -> ModelRecord:
    """The schedule, parameterization and variance a diffusers scheduler config describes (DDPM-, DDIM- or
    other schedulers' shared keys); a setting our schedules cannot reproduce is refused in one line."""
    where = f"the scheduler config ({config.get('_class_name', 'scheduler')})"
    unreadable = []
    if config.get("trained_betas") is not None:
        unreadable.append("trained_betas (an explicit beta list)")
    if config.get("rescale_betas_zero_snr"):
        unreadable.append("rescale_betas_zero_snr=true")
    beta = config.get("beta_schedule", "linear")
    if beta not in _inverse(BETA_SCHEDULES):
        unreadable.append(f"beta_schedule={beta}")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in _inverse(PREDICTION_TYPES):
        unreadable.append(f"prediction_type={prediction}")
    variances = {**_inverse(VARIANCE_TYPES), **_VARIANCE_ALIASES}
    # A DDPMScheduler without variance_type uses its default, fixed_small; other schedulers have none.
    variance = config.get(
        "variance_type", "fixed_small" if config.get("_class_name") == "DDPMScheduler" else None
    )
    if variance is not None and variance not in variances:
        unreadable.append(f"variance_type={variance}")
    if unreadable:
        raise InteropError(
            f"{where} uses {', '.join(unreadable)}, which our noise schedules and parameterizations cannot "
            "reproduce (we read beta_schedule linear or squaredcos_cap_v2, prediction_type epsilon, sample or "
            "v_prediction, variance_type fixed_small, fixed_large or learned_range); pass the unet/ folder "
            "alone to use the configured schedule=... instead."
        )
    schedule = schedule_config(
        kind=_inverse(BETA_SCHEDULES)[beta],
        num_timesteps=int(config.get("num_train_timesteps", 1000)),
        beta_start=float(config.get("beta_start", 1e-4)),
        beta_end=float(config.get("beta_end", 0.02)),
    )
    learned = int(net.get("out_channels", 0)) == 2 * int(net.get("in_channels", 0))
    default = "learned_range" if learned else ModelSpec.variance
    return ModelRecord(
        dict(net),
        schedule,
        _inverse(PREDICTION_TYPES)[prediction],
        variances[variance] if variance is not None else default,
    )


def pipeline_index() -> dict[str, Any]:
    """model_index.json of the exported pipeline folder."""
    return {
        "_class_name": PIPELINE_CLASS,
        "_diffusers_version": DIFFUSERS_VERSION,
        "scheduler": ["diffusers", SCHEDULER_CLASS],
        "unet": ["diffusers", "UNet2DModel"],
    }


# ----------------------------------------------------------------------------------------------------------
# safetensors metadata (str -> str)

_METADATA_KEYS = ("net", "schedule", "parameterization", "variance")


def safetensors_metadata(record: ModelRecord, ema: bool | None) -> dict[str, str]:
    """The record as safetensors metadata: JSON for the nested configs, plain strings otherwise."""
    weights = {True: "ema", False: "raw", None: "only"}[ema]
    return {
        "format": "pt",
        "ddim.net": json.dumps(record.net),
        "ddim.schedule": json.dumps(record.schedule),
        "ddim.parameterization": record.parameterization,
        "ddim.variance": record.variance,
        "ddim.weights": weights,
    }


def record_from_metadata(metadata: Mapping[str, str] | None) -> dict[str, Any] | None:
    """The hyper-parameters a safetensors file of ours carries (None for other safetensors files)."""
    if not metadata or "ddim.net" not in metadata:
        return None
    try:
        hparams = {
            key: json.loads(metadata[f"ddim.{key}"])
            if key in ("net", "schedule")
            else metadata[f"ddim.{key}"]
            for key in _METADATA_KEYS
            if f"ddim.{key}" in metadata
        }
    except json.JSONDecodeError as err:
        raise InteropError(
            f"the safetensors metadata is not readable JSON ({err}); re-export the file."
        ) from err
    return hparams
