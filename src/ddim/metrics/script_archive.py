"""The tensors of a TorchScript archive, read as data: no TorchScript code is compiled or run, no pickle
global outside a short list is resolved.

torch.jit.load does not import Python modules from the archive's pickles, but it compiles the archive's
code/ folder and runs it: a scripted `__setstate__` runs while loading, `forward` when called, and both may
call any operator registered in the process (reading files with aten::from_file, for one). A detector file is
weights we need, not a program we want to run, so its data.pkl is unpickled here with an allow-list: the
archive's own classes become attribute holders, tensors are rebuilt from the archive's data/ records, and any
other global ends the read.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# An FID Inception archive holds ~100 MB of tensors; a member list announcing far more is not one (and a
# deflated member could otherwise expand without bound while it is read).
MAX_ARCHIVE_BYTES = 1 << 30

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
# torch.jit._pickle's list constructors return their argument unchanged.
_LIST_HELPERS = {"build_intlist", "build_doublelist", "build_boollist", "build_tensorlist"}


class ScriptArchiveError(ValueError):
    """The file is not a TorchScript archive whose data.pkl holds only modules, containers and tensors."""


class ScriptObject:
    """Stands in for an instance of one of the archive's TorchScript classes: only its attributes are kept."""


@dataclass(frozen=True)
class _Storage:
    data: torch.UntypedStorage
    dtype: torch.dtype


def _same(value: Any) -> Any:
    return value


def _rebuild_tensor(
    storage: _Storage, offset: int, size: tuple, stride: tuple, *_ignored: Any
) -> torch.Tensor:
    """torch._utils._rebuild_tensor_v2 without its backward hooks and metadata (which only code would use);
    set_ refuses a view reaching past its storage."""
    if not isinstance(storage, _Storage) or not isinstance(offset, int):
        raise ScriptArchiveError("a tensor record does not point at a storage of the archive")
    if not all(isinstance(n, int) for n in (*size, *stride)):
        raise ScriptArchiveError("a tensor record has a non-integer size or stride")
    return torch.empty(0, dtype=storage.dtype).set_(storage.data, offset, size, stride)


class _TensorsOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, archive: zipfile.ZipFile, root: str) -> None:
        super().__init__(file)
        self._archive, self._root = archive, root
        self._storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            return ScriptObject
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch.jit._pickle" and name in _LIST_HELPERS:
            return _same
        raise ScriptArchiveError(f"data.pkl asks for the Python object {module}.{name}")

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ScriptArchiveError(f"unknown persistent record {pid!r:.80}")
        _, dtype, key, _location, _numel = pid
        if not isinstance(dtype, torch.dtype) or not isinstance(key, str):
            raise ScriptArchiveError(f"malformed storage record {pid!r:.80}")
        if key not in self._storages:
            try:
                raw = bytearray(self._archive.read(f"{self._root}/data/{key}"))
            except KeyError as err:
                raise ScriptArchiveError(f"storage {key} is missing from the archive") from err
            data = torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
            self._storages[key] = _Storage(data.untyped_storage(), dtype)
        return self._storages[key]


def _named_tensors(obj: ScriptObject, prefix: str, seen: set[int]) -> Iterator[tuple[str, torch.Tensor]]:
    """Tensors first, then submodules, as nn.Module.state_dict orders them."""
    if id(obj) in seen:  # memo references can make the object graph cyclic
        return
    seen.add(id(obj))
    attributes = vars(obj).items()
    yield from ((prefix + k, v) for k, v in attributes if isinstance(v, torch.Tensor))
    for k, v in attributes:
        if isinstance(v, ScriptObject):
            yield from _named_tensors(v, f"{prefix}{k}.", seen)


def read_script_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The named tensors of a TorchScript archive (the keys torch.jit.load(path).state_dict() would give).

    Raises ScriptArchiveError for anything else: another file format, a pickle asking for other globals."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pickles) != 1 or not any(n.endswith("/constants.pkl") for n in archive.namelist()):
                raise ScriptArchiveError("not a TorchScript archive (no <name>/data.pkl and constants.pkl)")
            if sum(info.file_size for info in archive.infolist()) > MAX_ARCHIVE_BYTES:
                raise ScriptArchiveError(f"its members add up to more than {MAX_ARCHIVE_BYTES >> 20} MiB")
            root = pickles[0].split("/")[0]
            unpickler = _TensorsOnlyUnpickler(io.BytesIO(archive.read(pickles[0])), archive, root)
            top = unpickler.load()
        if not isinstance(top, ScriptObject):
            raise ScriptArchiveError("data.pkl does not hold a TorchScript module")
        return dict(_named_tensors(top, "", set()))
    except ScriptArchiveError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged zip or pickle raises many types; all mean "not one"
        raise ScriptArchiveError(f"{type(err).__name__}: {str(err)[:200]}") from err
