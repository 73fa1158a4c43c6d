"""The FID cache folder (paths.cache_dir): converted Inception weights and reference statistics, shared by
runs and possibly by users. A path under a file can never work and is refused up front; a read-only cache
serves what it holds, and says so in one line when something new must be written there."""

from __future__ import annotations

import contextlib
import errno
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ddim.errors import DDIMError
from ddim.io import file_in_the_way

T = TypeVar("T")


def check_cache_dir(cache_dir: str | Path) -> None:
    blocker = file_in_the_way(cache_dir)
    if blocker is not None:
        raise DDIMError(
            f"The FID cache paths.cache_dir={cache_dir} lies under {blocker}, which is a file, not a folder: set "
            "paths.cache_dir=<a folder> (or DDIM_CACHE=<a folder>). Nothing was generated."
        )


@contextlib.contextmanager
def cache_writes(cache_dir: str | Path) -> Iterator[None]:
    """Turn a permission error on a file inside cache_dir into one line (others pass unchanged)."""
    try:
        yield
    except OSError as err:
        inside = err.filename is not None and Path(err.filename).absolute().is_relative_to(
            Path(cache_dir).absolute()
        )
        if not inside or err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        raise DDIMError(
            f"The FID cache paths.cache_dir={cache_dir} cannot be written ({err.strerror}: {err.filename}); FID "
            "keeps the converted Inception weights and reference statistics there. Point paths.cache_dir (or "
            "DDIM_CACHE) at a writable folder, or make it writable. Nothing was generated."
        ) from err


def guards_cache(prepare: Callable[..., T]) -> Callable[..., T]:
    """For a function whose first argument is the fid settings (with .cache_dir): the cache checked before it
    runs, and its cache writes reported as above."""

    @functools.wraps(prepare)
    def guarded(fid: Any, *args: Any, **kwargs: Any) -> T:
        check_cache_dir(fid.cache_dir)
        with cache_writes(fid.cache_dir):
            return prepare(fid, *args, **kwargs)

    return guarded
