"""Training-step speed and memory: the block step against the end-to-end step.

For a config, times the project's training step (`Trainer.step`: forward,
backward, clipping and the optimizer update, compiled) of the block-wise run
and of its end-to-end baseline (`families.end_to_end_config`) on random
batches made in advance, compile excluded, and prints for each:

- examples/s (and tokens/s for token data);
- the step's FLOPs (XLA's `cost_analysis()` of the compiled step) and the
  FLOP/s achieved;
- that as a share of a large float32 GEMM's FLOP/s, measured in this run;
- the peak RSS of the process (each step kind runs in its own process, so
  the peaks do not mix);
- XLA's argument and temporary bytes of the compiled step;

and the block / end-to-end ratios. The block-wise run trains its blocks in
turn (`round_robin`) so that the warm-up compiles every block's step; blocks
of equal shape cost the same. Integer inputs (labels, tokens) are drawn in
{0, 1}: the cost of a step does not depend on their values.

  python benchmarks/train_step.py --config=configs/vit_cifar100.py --steps=10
  python benchmarks/train_step.py --config=configs/dit_imagenet.py \
    --config.batch_size=32 --steps=5
"""

import copy
import json
import os
import resource
import subprocess
import sys
import time

# The config files import `configs.common` from the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from dblocks_jax import families, flops  # noqa: E402
from dblocks_jax.families import common  # noqa: E402

config_flags.DEFINE_config_file("config", None, "A block-wise config.")
flags.DEFINE_integer("steps", 10, "Timed steps per step kind.")
flags.DEFINE_integer("gemm_size", 2048, "n of the n x n x n float32 GEMM.")
flags.DEFINE_enum("kind", None, ["block", "e2e"], "Internal: one step kind.")
flags.mark_flag_as_required("config")
FLAGS = flags.FLAGS
RESULT = "RESULT "


def random_batch(spec, rng: np.random.Generator) -> dict:
  """One batch of `spec`: normal floats, integers in {0, 1}."""
  batch = {}
  for name, s in spec.items():
    if jnp.issubdtype(s.dtype, jnp.integer):
      batch[name] = rng.integers(0, 2, s.shape).astype(s.dtype)
    else:
      batch[name] = rng.standard_normal(s.shape).astype(s.dtype)
  return batch


def gemm_flops_per_second(n: int, repeats: int = 5) -> float:
  """FLOP/s of a jitted n x n @ n x n float32 matmul (best of `repeats`)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  matmul(a, a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


def measure(config, kind: str, steps: int) -> dict:
  """Times `steps` training steps of one kind in this process."""
  config = copy.deepcopy(config)
  if kind == "e2e":
    config = families.end_to_end_config(config)
  with config.unlocked():
    config.blocks.schedule = "round_robin"
  family = families.get(config.model.name)
  experiment = family.build(config)
  trainer = common.make_trainer(common.one_group(config), experiment, None)
  spec = family.batch_spec(config)
  warmup = max(config.blocks.num_blocks, 1) if kind == "block" else 1
  rng = np.random.default_rng(0)
  batches = [random_batch(spec, rng) for _ in range(warmup + steps)]
  for batch in batches[:warmup]:  # Compiles every block's step.
    metrics = trainer.step(batch)
  jax.block_until_ready((trainer.state, metrics))
  start = time.perf_counter()
  for batch in batches[warmup:]:
    metrics = trainer.step(batch)
  jax.block_until_ready((trainer.state, metrics))
  seconds = (time.perf_counter() - start) / steps

  compiled = trainer.lower_step(spec, block=0).compile()
  step_flops = flops.compiled_flops(compiled)
  memory = compiled.memory_analysis()
  tokens = spec["tokens"].shape if "tokens" in spec else None
  return {
    "seconds_per_step": seconds,
    "examples_per_second": config.batch_size / seconds,
    "tokens_per_second": (
      float(np.prod(tokens)) / seconds if tokens is not None else None
    ),
    "flops": step_flops,
    "flops_per_second": step_flops / seconds,
    # Linux reports ru_maxrss in KiB.
    "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "argument_bytes": int(memory.argument_size_in_bytes),
    "temp_bytes": int(memory.temp_size_in_bytes),
  }


def run_kind(kind: str) -> dict:
  """Runs this script for one step kind in a fresh process."""
  command = [sys.executable, os.path.abspath(__file__), *sys.argv[1:]]
  done = subprocess.run(
    [*command, f"--kind={kind}"], capture_output=True, text=True, check=False
  )
  lines = [x for x in done.stdout.splitlines() if x.startswith(RESULT)]
  if done.returncode != 0 or not lines:
    sys.exit(f"the {kind} step failed:\n{done.stderr[-3000:]}")
  return json.loads(lines[-1][len(RESULT) :])


def table(results: dict, gemm: float) -> str:
  block, e2e = results["block"], results["e2e"]
  rows = [
    ("examples/s", "examples_per_second", "{:.1f}"),
    ("tokens/s", "tokens_per_second", "{:.0f}"),
    ("GFLOP per step", "flops", "{:.1f}", 1e-9),
    ("GFLOP/s achieved", "flops_per_second", "{:.1f}", 1e-9),
    ("peak RSS (GB)", "peak_rss_bytes", "{:.2f}", 1e-9),
    ("XLA arguments (MiB)", "argument_bytes", "{:.1f}", 2**-20),
    ("XLA temporaries (MiB)", "temp_bytes", "{:.1f}", 2**-20),
  ]
  lines = [f"{'':24s}{'block step':>14s}{'end to end':>14s}{'ratio':>8s}"]
  for label, key, fmt, *scale in rows:
    if block[key] is None:
      continue
    s = scale[0] if scale else 1
    a, b = block[key] * s, e2e[key] * s
    lines.append(
      f"{label:24s}{fmt.format(a):>14s}{fmt.format(b):>14s}{a / b:>8.2f}"
    )
  lines.append(
    f"{'share of GEMM FLOP/s':24s}"
    f"{block['flops_per_second'] / gemm:>14.0%}"
    f"{e2e['flops_per_second'] / gemm:>14.0%}"
  )
  lines.append(f"float32 GEMM: {gemm / 1e9:.1f} GFLOP/s ({FLAGS.gemm_size}^3)")
  return "\n".join(lines)


def main(argv):
  del argv
  config = FLAGS.config
  if FLAGS.kind is not None:
    print(RESULT + json.dumps(measure(config, FLAGS.kind, FLAGS.steps)))
    return
  gemm = gemm_flops_per_second(FLAGS.gemm_size)
  results = {kind: run_kind(kind) for kind in ("block", "e2e")}
  print(
    f"{config.model.name}: {config.model.num_layers} layers, B="
    f"{config.blocks.num_blocks}, batch {config.batch_size},"
    f" {FLAGS.steps} timed steps each, {jax.devices()[0].device_kind}"
  )
  print(table(results, gemm))


if __name__ == "__main__":
  app.run(main)
