"""Autoregressive generation throughput: DiffusionBlocks against its
baseline, with and without the KV cache.

For an `ar_*` or `huginn_*` config, each model continues `--batch_size`
random prompts of `--prompt_length` tokens by `--num_tokens` tokens:
  * DiffusionBlocks: `sampler.num_steps` routed Euler steps per token (B by
    default, each through one block of L/B layers; K steps of the recurrent
    block and coda for huginn_*, after the prelude), greedy, then the new
    clean token through every block (its keys and values for the cache);
  * the baseline: one pass of L layers per token (huginn_*: the prelude, K
    iterations of the recurrent block, the coda), top-p.
With the cache the clean prefix's keys and values are kept; without, every
evaluation reruns the whole window (O(length^2) per token). Weights are
freshly initialised (throughput does not depend on their values). Prints
tokens per second of the four, measured in this process, and the ratios.

  python benchmarks/generation.py --config=configs/ar_pydocs.py \
    --batch_size=16 --prompt_length=32 --num_tokens=32 --repeats=3
  python benchmarks/generation.py --config=configs/huginn_pydocs.py \
    --config.sampler.num_steps=32
"""

import copy
import json
import os
import sys
import time

# The config files import `configs.common` from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from dblocks_jax import families  # noqa: E402
from dblocks_jax.families import ar as ar_family  # noqa: E402
from dblocks_jax.families import common  # noqa: E402

config_flags.DEFINE_config_file("config", None, "An ar_* or huginn_* config.")
flags.DEFINE_integer("batch_size", 16, "Sequences per generate call.")
flags.DEFINE_integer("prompt_length", 32, "Prompt tokens.")
flags.DEFINE_integer("num_tokens", 32, "Generated tokens per sequence.")
flags.DEFINE_integer("repeats", 3, "Timed calls per setting (after warm-up).")
flags.mark_flag_as_required("config")
FLAGS = flags.FLAGS


def tokens_per_second(config, method: str, use_cache: bool) -> float:
  config = copy.deepcopy(config)
  with config.unlocked():
    config.method = method
    config.model.max_seq_len = max(
      config.model.max_seq_len, FLAGS.prompt_length + FLAGS.num_tokens
    )
  experiment = families.get(config.model.name).build(config)
  trainer = common.make_trainer(config, experiment, None)
  sampler = common.sampler_from_config(config, experiment.plan)
  generate = ar_family.generate_fn(
    trainer, sampler, num_tokens=FLAGS.num_tokens, use_cache=use_cache
  )
  arrays = trainer.arrays()
  prompt = np.random.default_rng(0).integers(
    0, config.model.vocab_size, (FLAGS.batch_size, FLAGS.prompt_length)
  )
  generate(arrays, prompt, jax.random.key(0)).block_until_ready()  # Compile.
  start = time.perf_counter()
  for i in range(FLAGS.repeats):
    generate(arrays, prompt, jax.random.key(i + 1)).block_until_ready()
  elapsed = time.perf_counter() - start
  return FLAGS.repeats * FLAGS.batch_size * FLAGS.num_tokens / elapsed


def layers_per_token(config, steps: int) -> tuple[int, int]:
  """Layer evaluations per generated token of the cached programs:
  (DiffusionBlocks, the baseline)."""
  m = config.model
  if m.name == "recurrent":  # steps = K.
    block = m.recurrent_layers + m.coda_layers
    return (
      m.prelude_layers + (steps + 1) * block,
      m.prelude_layers + steps * m.recurrent_layers + m.coda_layers,
    )
  per_block = m.num_layers // config.blocks.num_blocks
  return steps * per_block + m.num_layers, m.num_layers


def main(argv):
  del argv
  config = FLAGS.config
  if config.model.name not in ("ar", "recurrent"):
    raise app.UsageError("--config must be an ar_* or huginn_* config.")
  rates = {
    (method, cache): tokens_per_second(config, method, cache)
    for method in ("dblocks", "e2e")
    for cache in (True, False)
  }
  num_blocks = config.blocks.num_blocks
  steps = config.sampler.num_steps or num_blocks
  blockwise_layers, end_to_end_layers = layers_per_token(config, steps)
  result = {
    "device": str(jax.devices()[0].device_kind),
    "num_layers": config.model.num_layers,
    "width": config.model.width,
    "vocab_size": config.model.vocab_size,
    "num_blocks": num_blocks,
    "euler_steps_per_token": steps,
    "batch_size": FLAGS.batch_size,
    "prompt_length": FLAGS.prompt_length,
    "num_tokens": FLAGS.num_tokens,
    # Layer evaluations per generated token (the cached programs).
    "layers_per_token_blockwise": blockwise_layers,
    "layers_per_token_end_to_end": end_to_end_layers,
    "tokens_per_second_blockwise_cached": rates["dblocks", True],
    "tokens_per_second_blockwise_uncached": rates["dblocks", False],
    "tokens_per_second_end_to_end_cached": rates["e2e", True],
    "tokens_per_second_end_to_end_uncached": rates["e2e", False],
    "cache_speedup_blockwise": rates["dblocks", True] / rates["dblocks", False],
    "cache_speedup_end_to_end": rates["e2e", True] / rates["e2e", False],
    "blockwise_over_end_to_end_cached": rates["dblocks", True]
    / rates["e2e", True],
  }
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
