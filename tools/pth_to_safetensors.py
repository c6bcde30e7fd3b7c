"""Converts a torch.save state dict (.pth) to .safetensors, once, without torch.

  python tools/pth_to_safetensors.py IN.pth OUT.safetensors

The library prefers `.safetensors` and `.npz` weight files: they hold only
tensors. A `.pth` is a pickle, which can ask to run code; this tool reads it
through the library's restricted reader
(`dblocks_jax.models.pretrained.torch_files`, never `torch.load`), which
refuses any file that asks for more than tensors (nothing in it runs), and
writes the tensors by name with `safetensors.numpy.save_file`. Views are
written as their own contiguous copies; bfloat16 tensors as float32
(exact; safetensors' numpy API has no bfloat16). Non-tensor entries of the
state dict are dropped.
"""

import argparse
import sys

import ml_dtypes
import numpy as np


def convert(source: str, target: str) -> dict[str, np.ndarray]:
  """Writes the tensors of `source` (.pth) to `target`; returns them."""
  from dblocks_jax import errors
  from dblocks_jax.models.pretrained import torch_files

  tensors = torch_files.load_state_dict(source)  # Refuses unsafe files first.
  save_file = errors.optional_import(
    "safetensors.numpy", "tools/pth_to_safetensors.py"
  ).save_file
  tensors = {
    name: np.ascontiguousarray(
      value.astype(np.float32) if value.dtype == ml_dtypes.bfloat16 else value
    )
    for name, value in tensors.items()
  }
  save_file(tensors, target)
  return tensors


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("input", help="a torch.save state dict (.pth)")
  parser.add_argument("output", help="the .safetensors file to write")
  args = parser.parse_args(argv)
  if not args.output.endswith(".safetensors"):
    parser.error(f"{args.output} should end in .safetensors")
  from dblocks_jax import errors
  from dblocks_jax.models.pretrained import torch_files

  try:
    tensors = convert(args.input, args.output)
  except (torch_files.UnsafeFileError, errors.MissingExtraError) as e:
    parser.exit(1, f"error: {e}\n")
  except FileNotFoundError:
    parser.exit(1, f"error: {args.input} does not exist\n")
  except torch_files.FormatError as e:
    parser.exit(1, f"error: {args.input} is not a readable state dict ({e})\n")
  print(f"wrote {len(tensors)} tensors to {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
