"""Regenerates the torch goldens of tests/models/test_inception.py (torch).

Not part of the package and never imported by the tests: it runs in a
separate environment with torch, torchvision and pytorch-fid, e.g.

  python -m venv ENV
  ENV/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy scipy pillow
  ENV/bin/pip install --no-deps pytorch-fid==0.3.0
  ENV/bin/python tools/inception_goldens.py

The goldens in the repo were made with torch 2.14.1, torchvision 0.29.1 and
pytorch-fid 0.3.0 on a CPU (the versions are also stored in the npz).

It builds pytorch-fid's `InceptionV3([3], resize_input=True,
normalize_input=True, use_fid_inception=True)` without downloading weights
(the FID blocks on a torchvision Inception-v3 with random init), sets every
conv weight and BatchNorm tensor from `tests/inception_random.py` (seed 0),
and writes to tests/fixtures/:

  inception_golden.npz: the 2048-d pool features of the two inputs of
    `golden_inputs()`, torch's bilinear (align_corners=False) interpolation
    matrices for MATRIX_RESIZES and the 2-d resizes of IMAGE_RESIZES, and
    the state-dict names and shapes (to test the name mapping).
  tiny_state_dict_zip.pth / tiny_state_dict_legacy.pth: `tiny_state_dict()`
    saved by torch.save in the zip and the legacy (pre-1.6) format.
"""

import collections
import importlib.util
import os

import numpy as np
import pytorch_fid
import torch
import torch.nn.functional as F
import torchvision
from pytorch_fid import inception as fid_inception

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "fixtures")


def _helper():
  """tests/inception_random.py, the seeded data the tests regenerate."""
  path = os.path.join(ROOT, "tests", "inception_random.py")
  spec = importlib.util.spec_from_file_location("inception_random", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _random_fid_inception(helper):
  """pytorch-fid's `fid_inception_v3()` with seeded random weights."""
  net = fid_inception._inception_v3(
    num_classes=1008, aux_logits=False, weights=None
  )
  net.Mixed_5b = fid_inception.FIDInceptionA(192, pool_features=32)
  net.Mixed_5c = fid_inception.FIDInceptionA(256, pool_features=64)
  net.Mixed_5d = fid_inception.FIDInceptionA(288, pool_features=64)
  net.Mixed_6b = fid_inception.FIDInceptionC(768, channels_7x7=128)
  net.Mixed_6c = fid_inception.FIDInceptionC(768, channels_7x7=160)
  net.Mixed_6d = fid_inception.FIDInceptionC(768, channels_7x7=160)
  net.Mixed_6e = fid_inception.FIDInceptionC(768, channels_7x7=192)
  net.Mixed_7b = fid_inception.FIDInceptionE_1(1280)
  net.Mixed_7c = fid_inception.FIDInceptionE_2(2048)
  state = net.state_dict()
  shapes = {
    k: tuple(v.shape)
    for k, v in state.items()
    if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
  }
  for name, value in helper.random_state_dict(shapes).items():
    state[name] = torch.from_numpy(value)
  net.load_state_dict(state)
  return net, shapes


def _features(helper, net) -> dict[str, np.ndarray]:
  fid_inception.fid_inception_v3 = lambda: net  # Instead of the download.
  model = fid_inception.InceptionV3(
    [3], resize_input=True, normalize_input=True, use_fid_inception=True
  ).eval()
  out = {}
  for name, pixels in helper.golden_inputs().items():
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    x = x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x
    with torch.no_grad():
      out[f"features_{name}"] = model(x)[0][:, :, 0, 0].numpy()
  return out


def _resizes(helper) -> dict[str, np.ndarray]:
  out = {}
  for n_in, n_out in helper.MATRIX_RESIZES:
    basis = torch.eye(n_in).reshape(n_in, 1, n_in, 1)
    y = F.interpolate(
      basis, size=(n_out, 1), mode="bilinear", align_corners=False
    )
    out[f"matrix_{n_in}_{n_out}"] = y[:, 0, :, 0].T.numpy()
  images = helper.resize_inputs()
  for i, ((_, size), x) in enumerate(
    zip(helper.IMAGE_RESIZES, images, strict=True)
  ):
    y = F.interpolate(
      torch.from_numpy(x), size=size, mode="bilinear", align_corners=False
    )
    out[f"resized_{i}"] = y.numpy()
  return out


def _save_tiny(helper) -> None:
  arrays = helper.tiny_state_dict()
  base = torch.from_numpy(arrays["base"].copy())
  tensors = collections.OrderedDict()
  for name, value in arrays.items():
    if name == "base":
      tensors[name] = base
    elif name == "base_t":
      tensors[name] = base.t()  # Same storage, strides (1, 6).
    elif name == "base_tail":
      tensors[name] = base[1:, 2:]  # Same storage, offset 8.
    elif name == "bn.bias":  # A parameter: pickled by _rebuild_parameter.
      tensors[name] = torch.nn.Parameter(torch.from_numpy(value.copy()))
    else:
      tensors[name] = torch.from_numpy(np.asarray(value).copy())
  assert not tensors["base_t"].is_contiguous()
  for fmt, zipped in (("zip", True), ("legacy", False)):
    path = os.path.join(DATA, f"tiny_state_dict_{fmt}.pth")
    torch.save(tensors, path, _use_new_zipfile_serialization=zipped)


def main():
  helper = _helper()
  torch.manual_seed(0)
  net, shapes = _random_fid_inception(helper)
  golden = {**_features(helper, net), **_resizes(helper)}
  golden["param_names"] = np.asarray(sorted(shapes))
  golden["param_shapes"] = np.asarray(
    [",".join(map(str, shapes[k])) for k in sorted(shapes)]
  )
  golden["versions"] = np.asarray(
    [torch.__version__, torchvision.__version__, pytorch_fid.__version__]
  )
  os.makedirs(DATA, exist_ok=True)
  np.savez_compressed(os.path.join(DATA, "inception_golden.npz"), **golden)
  _save_tiny(helper)
  for k, v in golden.items():
    print(k, v.shape, v.dtype)


if __name__ == "__main__":
  main()
