"""Reading PyTorch `torch.save` state dicts into numpy, without torch.

Two formats are read:

  zip (torch >= 1.6): a zip archive `<name>/data.pkl` (the pickled object,
    storages as persistent ids) plus one raw file `<name>/data/<key>` per
    storage and an optional `<name>/byteorder` ("little" or "big").
  legacy (`_use_new_zipfile_serialization=False`, and torch < 1.6): a
    sequence of pickles in one file: magic number, protocol version (1001),
    system info, the object, the list of storage keys; then, per key in that
    order, the storage's element count (int64, little-endian) and its bytes.

Persistent ids are `("storage", storage type, key, location, numel)`, with a
sixth entry in the legacy format (a view of another storage, or None).
Tensors are rebuilt by `torch._utils._rebuild_tensor_v2(storage, offset,
size, stride, ...)` (and parameters by `_rebuild_parameter(tensor, ...)`).

Reading a file never runs code from it: a pickle calls only what it
imports, and `find_class` (GLOBAL, STACK_GLOBAL) maps only the names above,
`collections.OrderedDict` and the typed storage classes to local stand-ins
that record values; any other name, e.g. the `os.system` of a malicious
file, is refused before anything is called (`UnsafeFileError`). Each pickle
is first scanned and refused if it holds an opcode outside `_OPCODES` (INST,
OBJ, NEWOBJ*, EXT*: other routes to build or import objects, which
torch.save never writes). So REDUCE can call only the stand-ins, BUILD
reaches only a stand-in's `__setstate__` (state dropped or refused), and
`persistent_load` returns only storages.
"""

import io
import os
import pickle
import pickletools
import struct
import zipfile

import ml_dtypes
import numpy as np

from dblocks_jax.errors import DataError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
  "DoubleStorage": np.float64,
  "FloatStorage": np.float32,
  "HalfStorage": np.float16,
  "BFloat16Storage": ml_dtypes.bfloat16,
  "LongStorage": np.int64,
  "IntStorage": np.int32,
  "ShortStorage": np.int16,
  "CharStorage": np.int8,
  "ByteStorage": np.uint8,
  "BoolStorage": np.bool_,
}


# Every opcode of pickle protocols 0-5 that torch.save can write, except
# INST, OBJ, NEWOBJ, NEWOBJ_EX (instantiate a class), EXT1, EXT2, EXT4
# (import through copyreg's extension registry) and the out-of-band buffers
# of protocol 5. An opcode of a future protocol is refused too.
_OPCODES = frozenset(
  [
    *("PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP"),
    *("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GET", "BINGET"),
    *("LONG_BINGET", "NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT"),
    *("BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT"),
    *("STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE"),
    *("SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES"),
    *("BINBYTES8", "BYTEARRAY8", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2"),
    *("TUPLE3", "EMPTY_LIST", "LIST", "APPEND", "APPENDS", "EMPTY_DICT"),
    *("DICT", "SETITEM", "SETITEMS", "EMPTY_SET", "ADDITEMS", "FROZENSET"),
    # Controlled by `find_class`, `persistent_load` and `__setstate__`.
    *("GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "PERSID", "BINPERSID"),
  ]
)


class FormatError(ValueError):
  """The file is not a state dict this reader understands (the reason)."""


class UnsafeFileError(DataError):
  """The file asks for an import or opcode that weight files never need.

  Nothing in it ran: the request is refused before anything is called.
  """

  def __init__(self, path: str, what: str):
    super().__init__(
      f"{path} is not a plain tensor file: it asks to {what}, which weight"
      " files never need; nothing in it was run. Use weights from a trusted"
      " source, best as .safetensors or .npz (tools/pth_to_safetensors.py"
      " converts a plain torch.save state dict once)."
    )


class _Refused(Exception):
  """Raised inside the unpickler: `what` the file asked to do."""

  def __init__(self, what: str):
    super().__init__(what)
    self.what = what


class _Placeholder:
  """A stand-in the pickle may create but not modify (BUILD is refused)."""

  __slots__ = ()

  def __setstate__(self, state):
    raise FormatError(f"it sets the state of a {type(self).__name__[1:]}")


class _StateDict(dict):
  """`collections.OrderedDict` in the pickle; BUILD (`_metadata`) drops."""

  __slots__ = ()

  def __setstate__(self, state):
    del state  # The `_metadata` of `nn.Module.state_dict()`: not needed.


class _StorageType(_Placeholder):
  __slots__ = ("dtype",)

  def __init__(self, name: str):
    self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage(_Placeholder):
  """A storage seen in the pickle; its data is filled in later."""

  __slots__ = ("dtype", "numel", "data")

  def __init__(self, dtype, numel: int):
    self.dtype, self.numel, self.data = dtype, int(numel), None

  def check_size(self, size: int) -> None:
    expected = self.numel * self.dtype.itemsize
    if size != expected:
      raise FormatError(f"a storage holds {size} bytes, not {expected}")

  def fill(self, raw: bytes, byteorder: str = "little") -> None:
    self.check_size(len(raw))
    dtype = self.dtype.newbyteorder("<" if byteorder == "little" else ">")
    self.data = np.frombuffer(raw, dtype).astype(self.dtype)


class _View(_Placeholder):
  """A legacy storage view: `numel` elements of `root` from `offset`."""

  __slots__ = ("root", "offset", "numel", "dtype")

  def __init__(self, root: _Storage, offset: int, numel: int):
    self.root, self.offset, self.numel = root, int(offset), int(numel)
    self.dtype = root.dtype

  @property
  def data(self):
    return self.root.data[self.offset : self.offset + self.numel]


class _Tensor(_Placeholder):
  """A tensor awaiting its storage's data: (storage, offset, size, stride)."""

  __slots__ = ("storage", "offset", "size", "stride")

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset = storage, int(offset)
    self.size = tuple(int(s) for s in size)
    self.stride = tuple(int(s) for s in stride)

  def materialise(self) -> np.ndarray:
    data = self.storage.data
    if data is None:
      raise FormatError("a tensor's storage has no data")
    if len(self.size) != len(self.stride) or min(self.size, default=1) < 0:
      raise FormatError(f"bad tensor size {self.size} / stride {self.stride}")
    if 0 in self.size:
      return np.zeros(self.size, data.dtype)
    last = self.offset + sum(
      (n - 1) * s for n, s in zip(self.size, self.stride, strict=True)
    )
    if self.offset < 0 or min(self.stride, default=0) < 0 or last >= len(data):
      raise FormatError(
        f"a tensor of size {self.size} and stride {self.stride} at offset"
        f" {self.offset} does not fit its storage of {len(data)} elements"
      )
    itemsize = data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
      data[self.offset :],
      self.size,
      tuple(s * itemsize for s in self.stride),
      writeable=False,
    )
    return np.array(view)


def _rebuild_tensor(storage, offset, size, stride, *unused):
  del unused  # requires_grad, backward hooks, metadata.
  return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(tensor, *unused):
  del unused  # requires_grad, backward hooks.
  return tensor


_ALLOWED = {
  ("collections", "OrderedDict"): _StateDict,
  ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
  ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
  ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


def _text(value) -> str:
  return value.decode("ascii") if isinstance(value, bytes) else str(value)


class _Unpickler(pickle.Unpickler):
  """Resolves only the names of a plain state dict; records storages."""

  def __init__(self, file, storages: dict | None = None):
    super().__init__(file, encoding="utf-8")
    self.storages = storages

  def find_class(self, module, name):
    if (module, name) in _ALLOWED:
      return _ALLOWED[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise _Refused(f"import {module}.{name}")

  def persistent_load(self, pid):
    if self.storages is None or not isinstance(pid, tuple) or len(pid) < 5:
      raise FormatError(f"unexpected persistent id {pid!r:.80}")
    kind, storage_type, key, _, numel = pid[:5]
    if _text(kind) != "storage" or not isinstance(storage_type, _StorageType):
      raise FormatError(f"unexpected persistent id {pid!r:.80}")
    key = _text(key)
    storage = self.storages.setdefault(key, _Storage(storage_type.dtype, numel))
    view = pid[5] if len(pid) > 5 else None
    if view is None:
      return storage
    _, offset, view_numel = view
    return _View(storage, offset, view_numel)


def _load(f, storages: dict | None = None):
  """The next pickle of a seekable file, scanned for opcodes before loading.

  A refused opcode counts only in a well-formed pickle (damage is reported
  as such); `pickletools.genops` only parses, it builds nothing.
  """
  start = f.tell()
  refused = None
  for opcode, _, _ in pickletools.genops(f):
    if opcode.name not in _OPCODES and refused is None:
      refused = opcode.name
  if refused is not None:
    raise _Refused(f"use the pickle opcode {refused}")
  f.seek(start)
  return _Unpickler(f, storages).load()


def _materialise(obj):
  if isinstance(obj, _Tensor):
    return obj.materialise()
  if isinstance(obj, dict):
    return {k: _materialise(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_materialise(v) for v in obj)
  return obj


def _read_zip(path: str, fill: bool = True):
  """The pickled object, its storages filled (or, without `fill`, only
  their sizes checked against the archive's directory)."""
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl")]
    if len(pickles) != 1:
      raise FormatError("the zip archive has no single <name>/data.pkl")
    prefix = pickles[0][: -len("data.pkl")]
    byteorder = "little"
    if f"{prefix}byteorder" in names:
      byteorder = archive.read(f"{prefix}byteorder").decode("ascii")
      if byteorder not in ("little", "big"):
        raise FormatError(f"unknown byte order {byteorder!r}")
    storages = {}
    obj = _load(io.BytesIO(archive.read(pickles[0])), storages)
    for key, storage in storages.items():
      name = f"{prefix}data/{key}"
      if name not in names:
        raise FormatError(f"the archive lacks the storage {name}")
      if fill:
        storage.fill(archive.read(name), byteorder)
      else:
        storage.check_size(archive.getinfo(name).file_size)
  return obj


def _read_legacy(path: str, fill: bool = True):
  """As `_read_zip`; without `fill`, storages are skipped over, their
  sizes checked against the file's length."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    if _load(f) != LEGACY_MAGIC:
      raise FormatError("it is neither a zip archive nor a legacy torch file")
    if _load(f) != LEGACY_PROTOCOL:
      raise FormatError("its legacy protocol version is not 1001")
    system = _load(f)
    if isinstance(system, dict) and not system.get("little_endian", True):
      raise FormatError("it was written on a big-endian machine")
    storages = {}
    obj = _load(f, storages)
    keys = _load(f)
    if not isinstance(keys, list):
      raise FormatError("the storage key list is missing")
    for key in keys:
      storage = storages.get(_text(key))
      if storage is None:
        raise FormatError(f"unexpected storage key {key!r:.40}")
      (numel,) = struct.unpack("<q", f.read(8))
      if numel != storage.numel:
        raise FormatError(
          f"storage {key} has {numel} elements, not {storage.numel}"
        )
      nbytes = numel * storage.dtype.itemsize
      if fill:
        storage.fill(f.read(nbytes))
      else:
        storage.check_size(min(nbytes, size - f.tell()))
        f.seek(nbytes, os.SEEK_CUR)
  return obj


def _read(path: str, fill: bool = True) -> dict[str, np.ndarray] | None:
  read = _read_zip if zipfile.is_zipfile(path) else _read_legacy
  obj = read(path, fill)
  if not isinstance(obj, dict):
    raise FormatError(f"it holds a {type(obj).__name__}, not a state dict")
  if not fill:
    return None
  state = _materialise(obj)
  return {str(k): v for k, v in state.items() if isinstance(v, np.ndarray)}


def check_state_dict(path: str) -> None:
  """`load_state_dict`'s checks without reading the tensors: the pickle
  (scanned and unpickled into stand-ins, so an unsafe file is refused the
  same way) and every storage's size against the file. Cheap: a state
  dict's pickle is small.

  Raises:
    as `load_state_dict`.
  """
  _guarded(path, fill=False)


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """The tensors of a `torch.save`d state dict, as numpy arrays by name.

  Raises:
    FileNotFoundError: there is no such file.
    UnsafeFileError: the file asks to import a name outside the allowed few
      or for a refused pickle opcode (a DataError; the message names the
      file and the name; nothing in the file was run).
    FormatError: the file is not such a state dict or is damaged (the
      message says why, as "it ...").
  """
  return _guarded(path, fill=True)


def _guarded(path: str, fill: bool):
  """`_read`, its errors as `load_state_dict` documents them."""
  try:
    return _read(path, fill)
  except _Refused as e:
    raise UnsafeFileError(path, e.what) from None
  except (FormatError, FileNotFoundError):
    raise
  except Exception as e:  # A damaged pickle raises many kinds of errors.
    raise FormatError(f"it is damaged ({type(e).__name__}: {e})") from e
