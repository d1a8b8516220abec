"""Read the tensors of a TorchScript archive (OpenAI's released CLIP ``.pt`` files) without running its code.

OpenAI's checkpoints (``ViT-L-14-336px.pt``, ...) are ``torch.jit.save`` archives: a zip holding
``<name>/data.pkl`` (the module tree, pickled), ``<name>/data/<key>`` (the raw bytes of each tensor
storage), ``<name>/constants.pkl`` and ``<name>/code/`` (TorchScript source). ``torch.load(weights_only=True)``
refuses them and ``torch.jit.load`` would compile and run the archive's code. Here only ``data.pkl`` is
read, with a restricted unpickler:

- a global is resolved only when it is on the allow-list: ``torch._utils._rebuild_tensor_v2`` /
  ``_rebuild_parameter`` (replaced by our own tensor builder), the ``torch.<Type>Storage`` names (a dtype
  each), ``collections.OrderedDict`` and TorchScript's list/type-tag helpers (identity functions here);
  TorchScript module classes (``__torch__.*``) become inert records of their attributes. Any other
  global (``os.system``, ``builtins.eval``, ``torch.load`` ...) raises ``UserError`` before anything is
  called.
- persistent ids ``('storage', <Type>Storage, key, location, numel)`` map to the zip's ``data/<key>``
  entry, read as bytes of that dtype (never unpickled).

The walk of the module tree yields ``{dotted.attribute.path: tensor}``: parameters, buffers and other
tensor attributes (TorchScript also saves non-persistent buffers such as the text tower's causal mask;
``backbone.load_state`` drops those). Why not a library: safetensors and ``torch.load(weights_only=True)``
both refuse this format, and no maintained package reads it without ``torch.jit.load``.
"""
from __future__ import annotations

import io
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
from aaclip.contract.errors import UserError

STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class _Storage:
    """A zip entry's bytes as a flat tensor of one dtype (what a persistent id names)."""

    def __init__(self, flat: torch.Tensor):
        self.flat = flat


class ScriptObject:
    """An inert stand-in for a TorchScript class instance: keeps the state pickle gives it, runs nothing.
    Each ``__torch__`` type name becomes a subclass (pickle's NEWOBJ needs a class); ``type_name`` names it."""

    type_name = ""

    def __init__(self, *unused) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _DType:
    """What a ``torch.<Type>Storage`` global resolves to: only its dtype is used."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise UserError("TorchScript archive: a tensor without a storage of the archive (not a weights file?)")
    return storage.flat.as_strided(tuple(size), tuple(stride), int(offset))


def _rebuild_parameter(data, requires_grad=False, hooks=None, *extra):
    if not isinstance(data, torch.Tensor):
        raise UserError("TorchScript archive: a parameter that is not a tensor")
    return data


def _identity(value, *unused):
    return value


_SCRIPT_TYPES: dict[str, type] = {}


def _script_type(type_name: str) -> type:
    if type_name not in _SCRIPT_TYPES:
        _SCRIPT_TYPES[type_name] = type("ScriptObject", (ScriptObject,), {"type_name": type_name})
    return _SCRIPT_TYPES[type_name]


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): dict,
    ("torch.jit._pickle", "restore_type_tag"): _identity,
    ("torch.jit._pickle", "build_intlist"): _identity,
    ("torch.jit._pickle", "build_tensorlist"): _identity,
    ("torch.jit._pickle", "build_doublelist"): _identity,
    ("torch.jit._pickle", "build_boollist"): _identity,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, source: Path):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.source = archive, prefix, source
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _DType(STORAGE_DTYPES[name])
        if module == "__torch__" or module.startswith("__torch__."):
            return _script_type(f"{module}.{name}")
        raise UserError(f"{self.source}: refusing to load: its pickle asks for '{module}.{name}', which is not "
                        "part of a weights file (a TorchScript archive holds only tensors and module records); "
                        "the file may be malicious")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and isinstance(pid[1], _DType)):
            raise UserError(f"{self.source}: unexpected persistent id {str(pid)[:80]} (not a tensor storage)")
        key = str(pid[2])
        if key not in self.storages:
            entry = f"{self.prefix}data/{key}"
            try:
                raw = self.archive.read(entry)
            except KeyError:
                raise UserError(f"{self.source}: storage {entry} is missing: the archive is incomplete") from None
            dtype = pid[1].dtype
            size = torch.empty((), dtype=dtype).element_size()
            if len(raw) % size:
                raise UserError(f"{self.source}: storage {entry} is {len(raw)} bytes, not a whole number of {dtype}")
            flat = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            self.storages[key] = _Storage(flat)
        return self.storages[key]


def is_torchscript_archive(path: Path) -> bool:
    """True for a zip written by ``torch.jit.save`` (it holds ``constants.pkl``, as torch itself checks)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.split("/")[-1] == "constants.pkl" for n in archive.namelist())


def _prefix(archive: zipfile.ZipFile, source: Path) -> str:
    tops = sorted({n[: -len("data.pkl")] for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1})
    if len(tops) != 1:
        raise UserError(f"{source}: expected one '<name>/data.pkl' in the TorchScript archive, found {len(tops)}")
    return tops[0]


def _walk(obj: Any, prefix: str, out: dict[str, torch.Tensor], seen: set[int]) -> None:
    if isinstance(obj, torch.Tensor):
        out[prefix.rstrip(".")] = obj
        return
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, ScriptObject):
        _walk(obj.state, prefix, out, seen)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(key, str):
                _walk(value, f"{prefix}{key}.", out, seen)


def read_torchscript_tensors(path: Path) -> dict[str, torch.Tensor]:
    """{dotted attribute name: tensor} of a TorchScript archive, without executing anything from it."""
    path = Path(path)
    with zipfile.ZipFile(path) as archive:
        prefix = _prefix(archive, path)
        byteorder = f"{prefix}byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() not in (b"little", b""):
            raise UserError(f"{path}: a big-endian TorchScript archive; convert it to safetensors on its machine")
        if sys.byteorder != "little":
            raise UserError("reading TorchScript archives needs a little-endian machine")
        unpickler = _RestrictedUnpickler(archive.read(f"{prefix}data.pkl"), archive, prefix, path)
        root = unpickler.load()
    out: dict[str, torch.Tensor] = {}
    _walk(root, "", out, set())
    if not out:
        raise UserError(f"{path}: the TorchScript archive holds no tensors")
    return out


__all__ = ["read_torchscript_tensors", "is_torchscript_archive", "ScriptObject"]
