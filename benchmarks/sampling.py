"""Sampling throughput: the routed block-wise sampler against end to end.

Both samplers take the same grid (`sampler.num_steps` steps) on the same
model; the block-wise one runs one block (L/B layers) per step, the
end-to-end one all L layers. Weights are freshly initialised (throughput
does not depend on their values). Prints samples per second of each (and
tokens per second for a language model), measured in this process, and
their ratio.

With `--compile_steps`, prints instead the compile time of the jitted
sampler (`jit(...).lower(...)` and `.compile()`, wall seconds) at each
number of grid points N, for each method in `--methods`: the routed sampler
scans the steps of each block, so its compile time should not grow with N.

  python benchmarks/sampling.py --config=configs/dit_fashion_mnist.py \
    --batch_size=64 --repeats=3
  python benchmarks/sampling.py --config=configs/mdm_pydocs.py \
    --batch_size=16 --repeats=3
  python benchmarks/sampling.py --config=configs/dit_fashion_mnist.py \
    --compile_steps=3,18,50 --methods=dblocks
"""

import copy
import json
import os
import sys
import time

# The config files import `configs.common` from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from dblocks_jax import families  # noqa: E402
from dblocks_jax.families import common  # noqa: E402
from dblocks_jax.families import dit as dit_family  # noqa: E402
from dblocks_jax.families import mdm as mdm_family  # noqa: E402

config_flags.DEFINE_config_file("config", None, "A DiT or MDM config.")
flags.DEFINE_integer("batch_size", 64, "Samples per sampler call.")
flags.DEFINE_integer("repeats", 3, "Timed calls per sampler (after warm-up).")
flags.DEFINE_list(
  "compile_steps", [], "Grid sizes N: print compile seconds at each."
)
flags.DEFINE_list("methods", ["dblocks", "e2e"], "Training methods to time.")
flags.mark_flag_as_required("config")
FLAGS = flags.FLAGS


def with_method(config, method: str, num_steps: int | None = None):
  """A copy of `config` trained by `method` (and sampling `num_steps`)."""
  config = copy.deepcopy(config)
  with config.unlocked():
    config.method = method
    if num_steps is not None:
      config.sampler.num_steps = num_steps
  return config


def sample_call(config, method: str, batch_size: int):
  """() -> one batch of samples, from a fresh model trained by `method`."""
  config = with_method(config, method)
  experiment = families.get(config.model.name).build(config)
  trainer = common.make_trainer(config, experiment, None)
  arrays = trainer.arrays()
  if config.model.name == "mdm":
    sampler = mdm_family.sampler_from_config(config, experiment.plan)
    predict = trainer.predict_fn(sampler)
    masked = jnp.full(
      (batch_size, config.data.seq_len), experiment.task.mask_id, jnp.int32
    )
    return lambda key: predict(arrays, {"tokens": masked}, key)
  sampler = common.sampler_from_config(config, experiment.plan)
  sample = dit_family.sample_fn(trainer, sampler)
  labels = jnp.arange(batch_size) % config.data.num_classes
  return lambda key: sample(labels, key)


def samples_per_second(config, method: str, batch_size: int, repeats: int):
  sample = sample_call(config, method, batch_size)
  sample(jax.random.key(0)).block_until_ready()  # Compile.
  start = time.perf_counter()
  for i in range(repeats):
    sample(jax.random.key(i + 1)).block_until_ready()
  return repeats * batch_size / (time.perf_counter() - start)


def compile_seconds(config, method: str, batch_size: int, steps) -> list:
  """[{num_steps, lower_seconds, compile_seconds}] of the jitted sampler of
  one fresh model, at each N in `steps` (each N a new jitted function)."""
  config = with_method(config, method)
  experiment = families.get(config.model.name).build(config)
  trainer = common.make_trainer(config, experiment, None)
  arrays = trainer.arrays()
  if config.model.name == "mdm":
    batch = {
      "tokens": jnp.full(
        (batch_size, config.data.seq_len), experiment.task.mask_id, jnp.int32
      )
    }
  else:
    batch = {"label": jnp.arange(batch_size) % config.data.num_classes}
  rows = []
  for n in steps:
    sampler_config = with_method(config, method, n)
    if config.model.name == "mdm":
      sampler = mdm_family.sampler_from_config(sampler_config, experiment.plan)
    else:
      sampler = common.sampler_from_config(sampler_config, experiment.plan)
    predict = trainer.predict_fn(sampler)
    start = time.perf_counter()
    lowered = predict.lower(arrays, batch, jax.random.key(0))
    lowered_at = time.perf_counter()
    lowered.compile()
    done = time.perf_counter()
    rows.append(
      {
        "method": method,
        "num_steps": n,
        "lower_seconds": round(lowered_at - start, 3),
        "compile_seconds": round(done - lowered_at, 3),
        "total_seconds": round(done - start, 3),
      }
    )
    print(json.dumps(rows[-1]), flush=True)
  return rows


def describe(config) -> dict:
  """The model and sampler settings every result names."""
  return {
    "device": str(jax.devices()[0].device_kind),
    "family": config.model.name,
    "variant": config.model.get("variant", ""),
    "num_layers": config.model.num_layers,
    "width": config.model.width,
    "num_blocks": config.blocks.num_blocks,
    "num_steps": config.sampler.num_steps,
    "sampler": config.sampler.method,
    "batch_size": FLAGS.batch_size,
  }


def main(argv):
  del argv
  config = FLAGS.config
  if FLAGS.compile_steps:
    steps = [int(n) for n in FLAGS.compile_steps]
    result = describe(config)
    del result["num_steps"]
    if config.model.name != "mdm":
      result["guidance_scale"] = config.sampler.guidance_scale
    result["compile"] = [
      row
      for method in FLAGS.methods
      for row in compile_seconds(config, method, FLAGS.batch_size, steps)
    ]
    print(json.dumps(result, indent=2))
    return
  rates = {
    method: samples_per_second(config, method, FLAGS.batch_size, FLAGS.repeats)
    for method in ("dblocks", "e2e")
  }
  result = describe(config)
  if config.model.name == "mdm":
    length = config.data.seq_len
    result.update(
      seq_len=length,
      tokens_per_second_blockwise=rates["dblocks"] * length,
      tokens_per_second_end_to_end=rates["e2e"] * length,
    )
  else:
    result.update(
      guidance_scale=config.sampler.guidance_scale,
      images_per_second_blockwise=rates["dblocks"],
      images_per_second_end_to_end=rates["e2e"],
    )
  result["speedup"] = rates["dblocks"] / rates["e2e"]
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
