"""Weight files never run code: a malicious .pth is refused, unrun.

No torch here: the .pth files are written by hand. `_dumps` writes the
pickle torch.save writes for a state dict (protocol 2: `collections.
OrderedDict`, `torch._utils._rebuild_tensor_v2` on storages given as
persistent ids), with a malicious object spliced in as `pickle.dumps`
writes it; `_write` packs it as torch's zip archive or legacy file. Each
payload would `touch` a marker file, which must not exist afterwards.
"""

import builtins
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import zipfile
from typing import Any, NamedTuple

import inception_random
import numpy as np
import pytest
from conftest import needs

from dblocks_jax.errors import DataError
from dblocks_jax.evaluate import features
from dblocks_jax.models.pretrained import inception_weights, torch_files

ROOT = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
DATA = os.path.join(ROOT, "tests", "fixtures")
CONVERTER = os.path.join(ROOT, "tools", "pth_to_safetensors.py")
FORMATS = ["zip", "legacy"]
_STORAGES = {
  np.dtype(np.float32): "FloatStorage",
  np.dtype(np.float16): "HalfStorage",
  np.dtype(np.int64): "LongStorage",
}


class Global(NamedTuple):  # GLOBAL module name
  module: str
  name: str


class Call(NamedTuple):  # func(*args): REDUCE
  func: Any
  args: tuple


class Persistent(NamedTuple):  # BINPERSID
  pid: tuple


class Build(NamedTuple):  # BUILD: sets obj's state
  obj: Any
  state: Any


class Exploit:
  """Unpickling it calls `func(*args)` (what a malicious file does)."""

  def __init__(self, func, *args):
    self.func, self.args = func, args

  def __reduce__(self):
    return self.func, self.args


def _fragment(obj, protocol: int) -> bytes:
  """The opcodes `pickle.dumps` writes for obj, less PROTO, FRAME, STOP."""
  data = pickle.dumps(obj, protocol=protocol)
  ops = list(pickletools.genops(data))
  ends = [pos for _, _, pos in ops[1:]] + [len(data)]
  skip = ("PROTO", "FRAME", "STOP")
  return b"".join(
    data[pos:end]
    for (op, _, pos), end in zip(ops, ends, strict=True)
    if op.name not in skip
  )


def _dumps(obj, protocol: int = 2) -> bytes:
  """A protocol-2 pickle of a tree of the nodes above, dicts (as torch's
  OrderedDict), tuples and plain values; other objects (an `Exploit`) as
  `pickle.dumps(obj, protocol)` writes them."""
  out = [pickle.PROTO + b"\x02"]

  def put(x):
    if isinstance(x, Global):
      out.append(pickle.GLOBAL + f"{x.module}\n{x.name}\n".encode())
    elif isinstance(x, Call):
      put(x.func)
      put(x.args)
      out.append(pickle.REDUCE)
    elif isinstance(x, Persistent):
      put(x.pid)
      out.append(pickle.BINPERSID)
    elif isinstance(x, Build):
      put(x.obj)
      put(x.state)
      out.append(pickle.BUILD)
    elif isinstance(x, tuple):
      out.append(pickle.MARK)
      for value in x:
        put(value)
      out.append(pickle.TUPLE)
    elif isinstance(x, dict):
      put(Call(Global("collections", "OrderedDict"), ()))
      if x:
        out.append(pickle.MARK)
        for key, value in x.items():
          put(key)
          put(value)
        out.append(pickle.SETITEMS)
    else:
      out.append(_fragment(x, protocol))

  put(obj)
  return b"".join(out) + pickle.STOP


def _tensor(key: str, storage: np.ndarray, fmt: str, **view) -> Call:
  """torch's pickle of a tensor on `storage` (1-d): its whole storage, or
  `view` (offset=, size=, stride=, in elements)."""
  pid = ("storage", Global("torch", _STORAGES[storage.dtype]), key, "cpu")
  pid += (storage.size,) + ((None,) if fmt == "legacy" else ())
  size = view.get("size", (storage.size,))
  stride = view.get("stride", (1,))
  args = (Persistent(pid), view.get("offset", 0), size, stride, False, {})
  return Call(Global("torch._utils", "_rebuild_tensor_v2"), args)


def _write(path, obj, storages: dict, fmt: str, protocol: int = 2) -> str:
  """Writes a .pth as torch.save does: `obj` (see `_dumps`) and the raw
  data of `storages` ({key: 1-d array}); returns the path."""
  if fmt == "zip":
    with zipfile.ZipFile(path, "w") as archive:
      archive.writestr("archive/data.pkl", _dumps(obj, protocol))
      archive.writestr("archive/byteorder", "little")
      for key, array in storages.items():
        archive.writestr(f"archive/data/{key}", array.tobytes())
  else:
    system = {"protocol_version": 1001, "little_endian": True}
    with open(path, "wb") as f:
      for header in (torch_files.LEGACY_MAGIC, 1001, system):
        f.write(pickle.dumps(header, protocol=2))
      f.write(_dumps(obj, protocol))
      f.write(pickle.dumps(list(storages), protocol=2))
      for array in storages.values():
        f.write(struct.pack("<q", array.size) + array.tobytes())
  return str(path)


def _benign(fmt: str):
  """(obj, storages, expected arrays) of a small state dict like
  `nn.Module.state_dict()`: views of one storage (transposed, offset), a
  Parameter, float16, an int64 scalar, and the `_metadata` BUILD."""
  rng = np.random.RandomState(0)
  base = rng.standard_normal(24).astype(np.float32)
  half = rng.standard_normal(3).astype(np.float16)
  steps = np.asarray([7], np.int64)
  storages = {"0": base, "1": half, "2": steps}
  weight = _tensor("0", base, fmt, size=(4, 6), stride=(6, 1))
  tensors = {
    "conv.weight": weight,
    "conv.weight_t": _tensor("0", base, fmt, size=(6, 4), stride=(1, 6)),
    "tail": _tensor("0", base, fmt, offset=8, size=(2, 3), stride=(6, 1)),
    "bn.bias": Call(
      Global("torch._utils", "_rebuild_parameter"), (weight, True, {})
    ),
    "half": _tensor("1", half, fmt),
    "bn.num_batches_tracked": _tensor("2", steps, fmt, size=(), stride=()),
  }
  metadata = {"_metadata": {"": {"version": 1}, "conv": {"version": 1}}}
  grid = base.reshape(4, 6)
  expected = {
    "conv.weight": grid,
    "conv.weight_t": grid.T,
    "tail": grid[1:3, 2:5],
    "bn.bias": grid,
    "half": half,
    "bn.num_batches_tracked": np.asarray(7, np.int64),
  }
  return Build(tensors, metadata), storages, expected


def _payloads(marker) -> dict:
  """{name: (object that touches marker when unpickled, protocol, the
  name the pickle imports)}; protocol 4 imports by STACK_GLOBAL, the
  others by GLOBAL."""
  system = f"{os.system.__module__}.system"  # posix.system on Linux.
  code = f"open({str(marker)!r}, 'w').close()"
  return {
    "os.system": (Exploit(os.system, f"touch {marker}"), 2, system),
    "builtins.exec": (Exploit(builtins.exec, code), 4, "builtins.exec"),
    "builtins.exec-v2": (Exploit(builtins.exec, code), 2, "__builtin__.exec"),
    "subprocess.Popen": (
      Exploit(subprocess.Popen, ["touch", str(marker)]),
      3,  # Protocol 2 would name it commands.Popen (Python 2's name).
      "subprocess.Popen",
    ),
  }


def _loaders():
  """The public ways a path becomes weights (each must refuse)."""
  return {
    "torch_files.load_state_dict": torch_files.load_state_dict,
    "inception_weights.read_weights": inception_weights.read_weights,
    "inception_weights.load_inception": inception_weights.load_inception,
    "features.InceptionFeatures": features.InceptionFeatures,
  }


def _assert_refused(path: str, refused: str, marker) -> None:
  for name, load in _loaders().items():
    with pytest.raises(torch_files.UnsafeFileError) as info:
      load(path)
    message = str(info.value)
    assert isinstance(info.value, DataError), name
    assert message.startswith(f"{path} is not a plain tensor file"), name
    assert f"it asks to {refused}, which weight" in message, name
    assert "tools/pth_to_safetensors.py" in message and "\n" not in message
    assert not marker.exists(), name


@pytest.mark.parametrize("payload", list(_payloads("m")))
def test_the_payloads_run_under_plain_pickle(tmp_path, payload):
  """The control: unpickled by `pickle`, each payload touches its marker."""
  marker = tmp_path / "pwned"
  exploit, protocol, _ = _payloads(marker)[payload]
  result = pickle.loads(pickle.dumps(exploit, protocol=protocol))
  if isinstance(result, subprocess.Popen):
    result.wait()
  assert marker.exists()


@pytest.mark.parametrize("payload", list(_payloads("m")))
@pytest.mark.parametrize("fmt", FORMATS)
def test_malicious_pth_is_refused_unrun(tmp_path, fmt, payload):
  marker = tmp_path / "pwned"
  exploit, protocol, refused = _payloads(marker)[payload]
  obj = {"conv.weight": exploit}
  path = _write(tmp_path / "evil.pth", obj, {}, fmt, protocol)
  _assert_refused(path, f"import {refused}", marker)


@pytest.mark.parametrize("fmt", FORMATS)
def test_disallowed_global_nested_in_allowed_ones_is_refused(tmp_path, fmt):
  """Allowed globals resolve first (a whole tensor, then a tensor's REDUCE
  whose size is the exploit); the refusal comes before anything is called."""
  marker = tmp_path / "pwned"
  exploit = Exploit(os.system, f"touch {marker}")
  obj, storages, _ = _benign(fmt)
  base = storages["0"]
  obj.obj["evil"] = _tensor("0", base, fmt, size=exploit, stride=(1,))
  path = _write(tmp_path / "nested.pth", obj, storages, fmt)
  _assert_refused(path, f"import {os.system.__module__}.system", marker)


def _opcode_pickles(marker) -> dict:
  """{case: (pickle bytes, what the refusal names)}: other opcodes that
  import or call, and a dotted name under an allowed module."""
  touch = f"S'touch {marker}'\n".encode()
  return {
    "INST": (
      b"\x80\x02(" + touch + b"ios\nsystem\n.",
      "use the pickle opcode INST",
    ),
    "OBJ": (
      b"\x80\x02(cos\nsystem\n" + touch + b"o.",
      "use the pickle opcode OBJ",
    ),
    "NEWOBJ": (
      b"\x80\x02ccollections\nOrderedDict\n)\x81.",
      "use the pickle opcode NEWOBJ",
    ),
    "NEWOBJ_EX": (
      b"\x80\x04ccollections\nOrderedDict\n)}\x92.",
      "use the pickle opcode NEWOBJ_EX",
    ),
    "EXT1": (b"\x80\x02\x82\x01.", "use the pickle opcode EXT1"),
    "EXT2": (b"\x80\x02\x83\x01\x00.", "use the pickle opcode EXT2"),
    "EXT4": (b"\x80\x02\x84\x01\x00\x00\x00.", "use the pickle opcode EXT4"),
    "dotted": (
      b"\x80\x04\x8c\x0bcollections\x8c\x14OrderedDict.fromkeys\x93)R.",
      "import collections.OrderedDict.fromkeys",
    ),
  }


@pytest.mark.parametrize("case", list(_opcode_pickles("m")))
@pytest.mark.parametrize("fmt", FORMATS)
def test_other_routes_to_code_are_refused(tmp_path, fmt, case):
  marker = tmp_path / "pwned"
  data, refused = _opcode_pickles(marker)[case]
  path = tmp_path / "evil.pth"
  if fmt == "zip":
    with zipfile.ZipFile(path, "w") as archive:
      archive.writestr("archive/data.pkl", data)
  else:
    magic = pickle.dumps(torch_files.LEGACY_MAGIC, protocol=2)
    path.write_bytes(magic + pickle.dumps(1001, protocol=2) + data)
  _assert_refused(str(path), refused, marker)


def test_build_on_a_tensor_is_refused(tmp_path):
  """BUILD reaches only the stand-ins' `__setstate__`: a tensor's refuses
  (it could otherwise replace the tensor's methods)."""
  obj, storages, _ = _benign("zip")
  replaced = {"materialise": Global("collections", "OrderedDict")}
  obj.obj["conv.weight"] = Build(obj.obj["conv.weight"], (None, replaced))
  path = _write(tmp_path / "build.pth", obj, storages, "zip")
  with pytest.raises(torch_files.FormatError, match="sets the state of a"):
    torch_files.load_state_dict(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_hand_written_state_dict_loads(tmp_path, fmt):
  """The writer above makes files the reader accepts (with the
  `_metadata` BUILD of `state_dict()`, which the torch fixtures lack)."""
  obj, storages, expected = _benign(fmt)
  path = _write(tmp_path / "benign.pth", obj, storages, fmt)
  loaded = inception_weights.read_weights(path)
  assert list(loaded) == list(expected)
  for name, value in expected.items():
    assert loaded[name].dtype == value.dtype, name
    np.testing.assert_array_equal(loaded[name], value, err_msg=name)


def _convert(source, target) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, CONVERTER, str(source), str(target)],
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )


@pytest.mark.parametrize("source", ["torch_zip", "torch_legacy", "hand_zip"])
def test_converter_writes_the_same_tensors(tmp_path, source):
  """torch.save's own files (tests/fixtures) and a hand-written one."""
  needs("safetensors", "weights")
  if source == "hand_zip":
    obj, storages, expected = _benign("zip")
    path = _write(tmp_path / "in.pth", obj, storages, "zip")
  else:
    path = os.path.join(DATA, f"tiny_state_dict_{source[6:]}.pth")
    expected = inception_random.tiny_state_dict()
  target = tmp_path / "out.safetensors"
  result = _convert(path, target)
  assert result.returncode == 0, result.stderr
  assert f"wrote {len(expected)} tensors" in result.stdout
  converted = inception_weights.read_weights(str(target))
  assert converted.keys() == expected.keys()
  for name, value in expected.items():
    assert converted[name].dtype == value.dtype, name
    np.testing.assert_array_equal(converted[name], value, err_msg=name)


def test_converter_refuses_a_malicious_file(tmp_path):
  marker = tmp_path / "pwned"
  exploit = Exploit(os.system, f"touch {marker}")
  path = _write(tmp_path / "evil.pth", {"w": exploit}, {}, "zip")
  target = tmp_path / "out.safetensors"
  result = _convert(path, target)
  assert result.returncode == 1
  lines = result.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: {path} is not")
  assert f"import {os.system.__module__}.system" in lines[0]
  assert not marker.exists() and not target.exists()
