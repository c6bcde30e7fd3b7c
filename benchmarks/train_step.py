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
  the peaks do not mix), and the page faults per timed step (minor faults:
  fresh pages the step's buffers touch; the C library's malloc returns the
  step's temporaries to the system after every step, a preloaded tcmalloc
  keeps them, and the allocator in use is printed);
- XLA's argument and temporary bytes of the compiled step;

and the block / end-to-end ratios. With `--profile=DIR`, it also traces the
timed steps of each kind with `jax.profiler` (a Perfetto trace under DIR,
which also opens in TensorBoard's profile plugin) and prints where the
step's time goes: XLA's ops summed by kind (the fusion's name without its
number: `ynn_fusion` are the matmuls on XLA:CPU; the op names in the
compiled HLO, `jax.stages.Compiled.as_text()`, say what each fusion
computes). The block-wise run trains its blocks in
turn (`round_robin`) so that the warm-up compiles every block's step; blocks
of equal shape cost the same. Integer inputs (labels, tokens) are drawn in
{0, 1}: the cost of a step does not depend on their values.

  python benchmarks/train_step.py --config=configs/vit_cifar100.py --steps=10
  python benchmarks/train_step.py --config=configs/dit_imagenet.py \
    --config.batch_size=32 --steps=5
  python benchmarks/train_step.py --config=configs/vit_cifar100.py --steps=3 \
    --profile=runs/profile

With `--seq_len=256,512,1024` (the language models: data.seq_len and
model.max_seq_len), it instead times the block step at each length on the
dense and the chunked attention paths (`model.attention_impl`), each in its
own process, and prints XLA's temporaries and tokens/s of each:

  python benchmarks/train_step.py --config=configs/mdm_text8.py:smoke \
    --seq_len=256,512,1024,2048 --steps=3
"""

import collections
import copy
import gzip
import json
import os
import re
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

from dblocks_jax import families  # noqa: E402
from dblocks_jax.families import (
  common,  # noqa: E402
  flops,
)

config_flags.DEFINE_config_file("config", None, "A block-wise config.")
flags.DEFINE_integer("steps", 10, "Timed steps per step kind.")
flags.DEFINE_integer("gemm_size", 2048, "n of the n x n x n float32 GEMM.")
flags.DEFINE_string(
  "profile", None, "Also trace the timed steps into DIR and print op times."
)
flags.DEFINE_integer("top", 12, "--profile: op kinds printed per step kind.")
flags.DEFINE_enum("kind", None, ["block", "e2e"], "Internal: one step kind.")
flags.DEFINE_list(
  "seq_len",
  None,
  "Language models: time the block step at these sequence lengths on the"
  " dense and chunked attention paths.",
)
SWEPT_PATHS = ("dense", "chunked")
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


def op_times(trace_dir: str, steps: int) -> dict[str, float]:
  """Seconds per step of each kind of XLA op in a `jax.profiler` trace.

  Sums the durations of the ops that XLA:CPU's executor threads ran, by the
  name without its number (`ynn_fusion.12` ->
  `ynn_fusion`); the executor's own spans (`ThunkExecutor::Execute`, which
  contain the ops) are left out. Returns {kind: seconds per step}, largest
  first.
  """
  paths = []
  for root, _, files in os.walk(trace_dir):
    paths += [os.path.join(root, f) for f in files if f.endswith(".json.gz")]
  with gzip.open(max(paths, key=os.path.getmtime)) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  threads = {
    (e["pid"], e["tid"]): e["args"]["name"]
    for e in events
    if e.get("ph") == "M" and e.get("name") == "thread_name"
  }
  totals = collections.Counter()
  for e in events:
    thread = threads.get((e.get("pid"), e.get("tid")), "")
    if e.get("ph") != "X" or "XLAEigen" not in thread:
      continue
    if e["name"].startswith("ThunkExecutor"):
      continue
    totals[re.sub(r"[.\d]+$", "", e["name"])] += e["dur"] * 1e-6 / steps
  return dict(totals.most_common())


def measure(config, kind: str, steps: int, profile: str | None = None) -> dict:
  """Times `steps` training steps of one kind in this process (and, with
  `profile`, traces `steps` more into that folder)."""
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
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  start = time.perf_counter()
  for batch in batches[warmup:]:
    metrics = trainer.step(batch)
  jax.block_until_ready((trainer.state, metrics))
  seconds = (time.perf_counter() - start) / steps
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
  # Linux reports ru_maxrss in KiB. Read before compiling again for XLA's
  # analyses, whose compile would count in the peak.
  peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

  profiled = None
  if profile:
    folder = os.path.join(profile, kind)
    with jax.profiler.trace(folder, create_perfetto_trace=True):
      for batch in batches[warmup:]:
        metrics = trainer.step(batch)
      jax.block_until_ready((trainer.state, metrics))
    profiled = op_times(folder, steps)

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
    "peak_rss_bytes": peak_rss,
    "page_faults_per_step": faults / steps,
    "allocator": allocator(),
    "argument_bytes": int(memory.argument_size_in_bytes),
    "temp_bytes": int(memory.temp_size_in_bytes),
    "op_seconds": profiled,
  }


def allocator() -> str:
  """The malloc this process runs on: a preloaded tcmalloc or jemalloc
  (`LD_PRELOAD`), else the C library's."""
  try:
    with open("/proc/self/maps") as f:
      maps = f.read()
  except OSError:
    return "unknown"
  for name in ("tcmalloc", "jemalloc"):
    if f"lib{name}" in maps:
      return name
  return "libc"


def run_kind(kind: str, overrides=()) -> dict:
  """Runs this script for one step kind in a fresh process, with config
  `overrides` ("--config.FIELD=VALUE", after the command line's)."""
  command = [sys.executable, os.path.abspath(__file__), *sys.argv[1:]]
  done = subprocess.run(
    [*command, *overrides, f"--kind={kind}"],
    capture_output=True,
    text=True,
    check=False,
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
    ("page faults per step", "page_faults_per_step", "{:,.0f}"),
    ("XLA arguments (MiB)", "argument_bytes", "{:.1f}", 2**-20),
    ("XLA temporaries (MiB)", "temp_bytes", "{:.1f}", 2**-20),
  ]
  lines = [f"{'':24s}{'block step':>14s}{'end to end':>14s}{'ratio':>8s}"]
  for label, key, fmt, *scale in rows:
    if block[key] is None:
      continue
    s = scale[0] if scale else 1
    a, b = block[key] * s, e2e[key] * s
    ratio = f"{a / b:.2f}" if b else "-"
    lines.append(
      f"{label:24s}{fmt.format(a):>14s}{fmt.format(b):>14s}{ratio:>8s}"
    )
  lines.append(
    f"{'share of GEMM FLOP/s':24s}"
    f"{block['flops_per_second'] / gemm:>14.0%}"
    f"{e2e['flops_per_second'] / gemm:>14.0%}"
  )
  lines.append(f"float32 GEMM: {gemm / 1e9:.1f} GFLOP/s ({FLAGS.gemm_size}^3)")
  lines.append(f"allocator: {block['allocator']}")
  return "\n".join(lines)


def sweep(lengths) -> dict:
  """{(length, path): the block step's `measure`} at each sequence length
  and attention path, each in its own process."""
  results = {}
  for length in lengths:
    for path in SWEPT_PATHS:
      results[length, path] = run_kind(
        "block",
        [
          f"--config.data.seq_len={length}",
          f"--config.model.max_seq_len={length}",
          f"--config.model.attention_impl={path}",
        ],
      )
  return results


def sweep_table(results: dict) -> str:
  """One row per length: each path's XLA temporaries (MiB) and tokens/s,
  and chunked / dense of both."""
  head = "".join(f"{p + ' MiB':>14s}{p + ' tok/s':>15s}" for p in SWEPT_PATHS)
  lines = [f"{'seq_len':>8s}{head}{'MiB ratio':>11s}{'tok/s ratio':>13s}"]
  for length in sorted({n for n, _ in results}):
    row = [results[length, p] for p in SWEPT_PATHS]
    cells = "".join(
      f"{r['temp_bytes'] / 2**20:>14.1f}{r['tokens_per_second']:>15.0f}"
      for r in row
    )
    dense, chunked = row
    lines.append(
      f"{length:>8d}{cells}"
      f"{chunked['temp_bytes'] / dense['temp_bytes']:>11.3f}"
      f"{chunked['tokens_per_second'] / dense['tokens_per_second']:>13.2f}"
    )
  return "\n".join(lines)


def main(argv):
  del argv
  config = FLAGS.config
  if FLAGS.kind is not None:
    result = measure(config, FLAGS.kind, FLAGS.steps, FLAGS.profile)
    print(RESULT + json.dumps(result))
    return
  if FLAGS.seq_len:
    if "seq_len" not in config.data or "attention_impl" not in config.model:
      sys.exit(
        f"--seq_len sweeps the language models' data.seq_len;"
        f" {config.model.name} has none (or no model.attention_impl)."
      )
    lengths = [int(n) for n in FLAGS.seq_len]
    results = sweep(lengths)
    print(
      f"{config.model.name}: {config.model.num_layers} layers, B="
      f"{config.blocks.num_blocks}, batch {config.batch_size}, block step,"
      f" {FLAGS.steps} timed steps each, {jax.devices()[0].device_kind}"
    )
    print(sweep_table(results))
    return
  gemm = gemm_flops_per_second(FLAGS.gemm_size)
  results = {kind: run_kind(kind) for kind in ("block", "e2e")}
  print(
    f"{config.model.name}: {config.model.num_layers} layers, B="
    f"{config.blocks.num_blocks}, batch {config.batch_size},"
    f" {FLAGS.steps} timed steps each, {jax.devices()[0].device_kind}"
  )
  print(table(results, gemm))
  if FLAGS.profile:
    for kind, result in results.items():
      print(op_table(kind, result))


def op_table(kind: str, result: dict) -> str:
  """The `--top` op kinds of one step kind: ms per step and share of the
  summed op time (the executor runs ops on several threads, so the sum can
  differ from the step's wall time)."""
  ops = result["op_seconds"]
  total = sum(ops.values())
  lines = [
    f"{kind} step: XLA op time {total * 1e3:.0f} ms per step"
    f" (wall {result['seconds_per_step'] * 1e3:.0f} ms)"
  ]
  for name, seconds in list(ops.items())[: FLAGS.top]:
    lines.append(f"  {name:32s}{seconds * 1e3:>9.1f} ms{seconds / total:>8.1%}")
  return "\n".join(lines)


if __name__ == "__main__":
  app.run(main)
