"""Share a trained model: `python -m ddim.export ckpt=PATH out=DIR` writes a diffusers pipeline folder
(DDIMPipeline / DDPMPipeline.from_pretrained(DIR)); `format=safetensors out=FILE.safetensors` one file that
our evaluation reads back. Arguments are key=value, as for src/train.py and src/eval.py. A mistake is one line
on stderr and exit status 2, before anything is written. See ddim.checkpoints.export for the formats.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from ddim.checkpoints.export import export_diffusers, export_safetensors
from ddim.diffusion.schedule import SKIP_TYPES
from ddim.errors import user_error_in
from ddim.settings import SettingsError, check

USAGE = (
    "python -m ddim.export ckpt=PATH out=DIR [format=diffusers|safetensors] [use_ema=true] [overwrite=false]"
)


def export(
    ckpt: str,
    out: str,
    format: Literal["diffusers", "safetensors"] = "diffusers",
    use_ema: bool = True,
    spacing: Literal[SKIP_TYPES] = "uniform",
    overwrite: bool = False,
) -> Path:
    """ckpt: any checkpoint evaluation reads; use_ema=false exports the raw weights; spacing: the timestep
    rule the diffusers scheduler follows (uniform, leading or trailing; the others have no diffusers
    spacing and are refused); overwrite=true replaces a non-empty out."""
    if format == "safetensors":
        if spacing != "uniform":
            raise SettingsError(
                "spacing= is a diffusers scheduler setting; format=safetensors has no scheduler."
            )
        return export_safetensors(ckpt, out, use_ema=use_ema, overwrite=overwrite)
    return export_diffusers(ckpt, out, use_ema=use_ema, spacing=spacing, overwrite=overwrite)


def _value(text: str) -> str | bool | None:
    """A command-line value: true/false/null as YAML and Hydra read them, anything else as a string."""
    return {"true": True, "false": False, "null": None}.get(text.lower(), text)


def parse(argv: Sequence[str]) -> dict[str, str | bool | None]:
    """key=value arguments, checked against export()'s annotations (unknown, missing or bad keys refused)."""
    values = {}
    for arg in argv:
        key, sep, text = arg.partition("=")
        if not sep or not key:
            raise SettingsError(f"expected key=value arguments, got {arg!r}; usage: {USAGE}")
        values[key] = _value(text)
    check(export, values, "", "python -m ddim.export")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        export(**parse(sys.argv[1:] if argv is None else argv))
    except Exception as err:
        user_error = user_error_in(err)
        if user_error is None:
            raise
        print(f"Error: {user_error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
