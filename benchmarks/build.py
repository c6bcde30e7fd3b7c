"""Model build time: a config's parameters, initialised from nothing.

Builds each config's model through its family (`families.get(name).build`,
as training does) in a fresh process, so no compilation is cached from an
earlier build, and prints one JSON line per build: the wall seconds until
every parameter is computed, how many XLA programs were compiled and their
compile seconds, the number of parameters, and a digest of their bytes.

`--factories` picks how `BlockwiseModel.build` runs the model's factories
(shell, layers, fixed parts):

  eager   as the library does: every initializer an eager op, compiled once
          per distinct (initializer, shape) and reused by every layer and
          block of that shape;
  jitted  each factory as one `nnx.jit` program (the layers' once per
          distinct layer count, shared by the blocks of that count), the
          alternative measured against it.

With both, each config also prints whether their parameters are
bit-identical (equal digests).

  python benchmarks/build.py configs/dit_fashion_mnist.py \
    configs/vit_fashion_mnist.py configs/ar_pydocs.py
  python benchmarks/build.py configs/dit_fashion_mnist.py:smoke \
    --factories=eager,jitted --repeats=2
"""

import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FACTORIES = ("eager", "jitted")


def load_config(config_arg: str):
  """ "path.py[:arg]" -> the ConfigDict of `get_config(arg)`."""
  path, _, arg = config_arg.partition(":")
  spec = importlib.util.spec_from_file_location("config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)


def count_compiles() -> dict:
  """{"count", "seconds"} of the XLA compilations from now on (a wrapper
  around JAX's backend compile)."""
  from jax._src import compiler

  total = {"count": 0, "seconds": 0.0}
  compile_fn = compiler.backend_compile_and_load

  def timed(*args, **kwargs):
    start = time.perf_counter()
    try:
      return compile_fn(*args, **kwargs)
    finally:
      total["count"] += 1
      total["seconds"] += time.perf_counter() - start

  compiler.backend_compile_and_load = timed
  return total


def jit_factories() -> None:
  """Makes `BlockwiseModel.build` run each factory as one `nnx.jit`
  program (layers: static layer count)."""
  from flax import nnx

  from dblocks_jax.blockwise import parts

  build = parts.BlockwiseModel.build.__func__

  def jitted(cls, plan, *, shell, layer=None, layers=None, fixed=None, **kw):
    if layers is None:
      layers = lambda n, rngs: parts._stack_of(layer, n, rngs)  # noqa: E731
    return build(
      cls,
      plan,
      shell=nnx.jit(shell),
      layers=nnx.jit(layers, static_argnums=0),
      fixed=None if fixed is None else nnx.jit(fixed),
      **kw,
    )

  parts.BlockwiseModel.build = classmethod(jitted)


def digest(leaves) -> str:
  """sha256 of the arrays' bytes (PRNG keys by their key data)."""
  import jax
  import numpy as np

  h = hashlib.sha256()
  for x in leaves:
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    h.update(np.ascontiguousarray(np.asarray(x)).tobytes())
  return h.hexdigest()[:16]


def measure(config_arg: str, factories: str) -> dict:
  """Builds `config_arg`'s model ("path.py[:arg]") in this process."""
  sys.path.insert(0, ROOT)
  import jax
  from flax import nnx

  from dblocks_jax import families

  config = load_config(config_arg)
  if factories == "jitted":
    jit_factories()
  jax.devices()  # The backend starts before the clock.
  compiles = count_compiles()
  start = time.perf_counter()
  model = families.get(config.model.name).build(config).model
  groups = [model.shared, *model.blocks, model.fixed]
  states = [nnx.state(part) for parts in groups for part in parts.values()]
  jax.block_until_ready(states)
  seconds = time.perf_counter() - start
  leaves = jax.tree.leaves(states)
  return {
    "config": config_arg,
    "factories": factories,
    "build_seconds": round(seconds, 3),
    "compiles": compiles["count"],
    "compile_seconds": round(compiles["seconds"], 3),
    "num_blocks": model.num_blocks,
    "num_params": int(sum(x.size for x in leaves)),
    "digest": digest(leaves),
    "device": str(jax.devices()[0].device_kind),
  }


def fresh(config_arg: str, factories: str) -> dict:
  """`measure` in a new Python process."""
  out = subprocess.run(
    [
      sys.executable,
      os.path.abspath(__file__),
      config_arg,
      f"--factories={factories}",
      "--one",
    ],
    check=True,
    capture_output=True,
    text=True,
    cwd=ROOT,
  ).stdout
  return json.loads(out.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("configs", nargs="+", help="path.py[:arg] per model")
  parser.add_argument("--repeats", type=int, default=1, help="fresh builds")
  parser.add_argument(
    "--factories", default="eager", help=f"comma-separated {FACTORIES}"
  )
  parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  kinds = args.factories.split(",")
  for kind in kinds:
    if kind not in FACTORIES:
      parser.error(f"--factories={kind!r}: choose from {FACTORIES}")
  if args.one:
    print(json.dumps(measure(args.configs[0], kinds[0])))
    return
  for config_arg in args.configs:
    digests = set()
    for _ in range(args.repeats):
      for kind in kinds:  # Interleaved: both see the same machine load.
        result = fresh(config_arg, kind)
        digests.add(result["digest"])
        print(json.dumps(result), flush=True)
    if len(kinds) > 1:
      print(
        json.dumps({"config": config_arg, "bit_identical": len(digests) == 1})
      )


if __name__ == "__main__":
  main()
