"""Files written atomically, and the one conversion between uint8 tensors and PIL images.

Every file the project writes (checkpoints, sample shards, grids, metrics, caches) goes through `atomic_write`:
the bytes go to a temporary file in the target's own directory (a rename is only atomic within one file
system; TMPDIR may be another), are flushed and fsynced, renamed over the target, and the directory entry is
fsynced. A reader, a crash or a kill -9 therefore sees the old file or the new one, never a truncated one;
what a kill can leave is a temporary file, named so that `remove_stale_temporaries` finds it.

The final file's mode follows the umask (0o666 & ~umask), as a plain open() would: the temporary file is
created with os.open(..., 0o666), not mkstemp, whose 0600 would survive the rename and hide results from the
rest of a group sharing a project folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

TEMP_SUFFIX = ".ddim-tmp"


def temporary_name(target: str | os.PathLike) -> Path:
    """A fresh hidden name beside target: .<name>.<pid>-<random>.ddim-tmp (unique per writer)."""
    target = Path(target)
    return target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")


def _target_of(temp: Path) -> str | None:
    """The target name a temporary of ours was made for, or None if the name is not one of ours."""
    name = temp.name
    if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
        return None
    target, _, token = name[1 : -len(TEMP_SUFFIX)].rpartition(".")
    return target if target and "-" in token else None


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename in directory durable (its entry, not only the file's bytes, must reach the disk)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary beside path for writing; on a clean exit it replaces path, on any error it is removed.

    `mode` is "wb" (bytes) or "w" (text, UTF-8). Parent directories are created.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write writes whole files; mode must be 'wb' or 'w', got {mode!r}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temporary_name(path)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        # Text: UTF-8 and no newline translation, so files (and csv's line ends) are the same on every OS.
        text = {} if mode == "wb" else {"encoding": "utf-8", "newline": ""}
        with os.fdopen(fd, mode, **text) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)
        raise
    fsync_directory(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_write(path) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Indented JSON; values JSON does not know (paths, numpy scalars) are written as their str()."""
    return write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def save_tensors(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save(obj) atomically; keep obj to tensors and plain containers so it loads with weights_only."""
    with atomic_write(path) as f:
        torch.save(obj, f)
    return Path(path)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside path to fill; on a clean exit its files are fsynced and it replaces path
    (an existing folder there is removed first), on any error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temporary_name(path)
    temp.mkdir()  # mode from the umask, like the files inside
    try:
        yield temp
        for file in temp.iterdir():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(temp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(temp, path)
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)
    fsync_directory(path.parent)


def remove_stale_temporaries(
    directory: str | os.PathLike, targets: set[str] | None = None, older_than_s: float = 0.0
) -> list[Path]:
    """Remove temporaries our writers left in directory (after a kill); returns what was removed.

    targets: only temporaries for these target names (so concurrent writers of other files keep theirs);
    older_than_s: only those not modified for this long. Other files are never touched.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    now = time.time()
    for temp in directory.iterdir():
        target = _target_of(temp)
        if target is None or (targets is not None and target not in targets):
            continue
        try:
            if older_than_s > 0 and now - temp.lstat().st_mtime < older_than_s:
                continue
            if temp.is_dir() and not temp.is_symlink():
                shutil.rmtree(temp)
            else:
                temp.unlink()
        except FileNotFoundError:  # another process cleaned it meanwhile
            continue
        removed.append(temp)
    return removed


# ----------------------------------------------------------------------------------------------------------
# Pixels


def file_in_the_way(path: str | os.PathLike) -> Path | None:
    """The regular file standing where a folder of `path` (or path itself) would have to be, if any: mkdir
    would fail there mid-run, so callers refuse such a path before anything is written."""
    for parent in (Path(path).absolute(), *Path(path).absolute().parents):
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def unwritable_folder(path: str | os.PathLike) -> Path | None:
    """The existing folder where writing `path` would fail for lack of permission (a read-only folder or file
    system): path itself, or its nearest existing parent when path is yet to be made; None when writing can
    go ahead (or a file stands in the way, which file_in_the_way reports)."""
    for parent in (Path(path).absolute(), *Path(path).absolute().parents):
        if parent.exists():
            return None if not parent.is_dir() or os.access(parent, os.W_OK | os.X_OK) else parent
    return None
