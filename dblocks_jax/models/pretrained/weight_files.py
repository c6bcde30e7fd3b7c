"""Cheap checks of weight files before anything is loaded, so that a file
that is truncated or of another format fails at the start of a run, not at
its first evaluation. No tensor's bytes are read:

  .safetensors: the 8-byte header length, the JSON header, and the file's
    length against the end of the last tensor the header lists.
  .npz: the zip directory, and each member's .npy header (shape, dtype)
    against the member's size.
  anything else (torch.save): `torch_files.check_state_dict` (the pickle,
    refused if unsafe, and each storage's size).
"""

import json
import os
import struct
import zipfile

import numpy as np

from dblocks_jax.models.pretrained import torch_files
from dblocks_jax.models.pretrained.torch_files import FormatError


def check(path: str) -> None:
  """Checks a weight file's format and length (see the module docstring).

  Raises:
    FileNotFoundError: there is no such file.
    FormatError: it is damaged or of another format (the message says why,
      as "it ...").
    torch_files.UnsafeFileError: a .pth asks for more than tensors.
  """
  if path.endswith(".safetensors"):
    check_safetensors(path)
  elif path.endswith(".npz"):
    check_npz(path)
  else:
    torch_files.check_state_dict(path)


def check_safetensors(path: str) -> None:
  """A safetensors file: u64 header length n, n bytes of JSON {name:
  {dtype, shape, data_offsets [begin, end]}}, then the data, which ends
  where the last tensor does."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) < 8:
      raise FormatError(f"it holds {size} bytes, fewer than a header's 8")
    (length,) = struct.unpack("<Q", raw)
    if length > size - 8:
      raise FormatError(
        f"its header of {length} bytes runs past its end ({size} bytes)"
      )
    try:
      header = json.loads(f.read(length))
      ends = [
        int(entry["data_offsets"][1])
        for name, entry in header.items()
        if name != "__metadata__"
      ]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
      raise FormatError(f"its header is not safetensors JSON ({e})") from e
  expected = 8 + length + max(ends, default=0)
  if size != expected:
    raise FormatError(
      f"it holds {size} bytes, not the {expected} its header lists"
    )


def check_npz(path: str) -> None:
  """A .npz archive: every member is an .npy array of its stated size."""
  readers = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
  }
  try:
    with zipfile.ZipFile(path) as archive:
      sizes = []
      for info in archive.infolist():
        with archive.open(info) as member:
          version = np.lib.format.read_magic(member)
          if version not in readers:
            raise ValueError(f"{info.filename} is .npy version {version}")
          shape, _, dtype = readers[version](member)
          expected = member.tell() + int(np.prod(shape)) * dtype.itemsize
        sizes.append((info.filename, info.file_size, expected))
  except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
    raise FormatError(f"it is not a readable .npz archive ({e})") from e
  for name, size, expected in sizes:
    if size != expected:
      raise FormatError(f"its member {name} holds {size} bytes, not {expected}")
