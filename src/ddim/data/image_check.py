"""Image files checked before training starts, so a bad file is named up front instead of failing mid-epoch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from ddim.errors import DDIMError


class UnreadableImageError(DDIMError, OSError):
    """An image file PIL cannot read; the message names it and says what to do."""


def check_images(paths: Sequence[Path]) -> None:
    """Open and verify every file (header and, for PNG, chunk checksums; no pixel decoding, so fast)."""
    bad = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as err:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ... for bad files
            bad.append(f"{path} ({type(err).__name__})")
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise UnreadableImageError(
            f"{len(bad)} file(s) in the image folder cannot be read as images: {shown}. "
            "Remove or replace them (or move them out of the folder), then start again."
        )
