"""Command line: python -m dblocks_jax.main --config=configs/NAME.py[:args]
--workdir=DIR [--mode=train|eval|compare|sample|memory|encode|assemble]
[--sources=DIR,...] [--distributed [--coordinator_address=HOST:PORT
--num_processes=N --process_id=I]].

Kept short on purpose: the work is in `train.train_and_evaluate` (and the
other modes' modules), which tests and notebooks call directly. Bad input
ends with one line on stderr and exit status 2; a NaN stops the run with
exit status 3, naming the step and block.
"""

import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from dblocks_jax.errors import ConfigError, NonFiniteLossError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  "config",
  None,
  "Config file, e.g. configs/quickstart.py[:smoke].",
  lock_config=True,
)
flags.DEFINE_string("workdir", None, "Directory of the run (resumed if any).")
flags.DEFINE_enum(
  "mode",
  "train",
  ["train", "eval", "compare", "sample", "memory", "encode", "assemble"],
  "train (and evaluate), eval (newest checkpoint), compare (DiffusionBlocks"
  " and its end-to-end baseline in one command: accuracy or FID, compiled"
  " step memory, wall time), sample (a generator's"
  " newest checkpoint: PNG grid and .npz), memory (compiled step memory),"
  " encode (an image dataset -> latents in data.dir, with the SD VAE),"
  " assemble (per-block jobs' checkpoints in --sources -> one model in"
  " --workdir).",
)
flags.DEFINE_list(
  "sources", [], "--mode=assemble: the workdirs of the per-block jobs."
)
flags.DEFINE_bool(
  "distributed",
  False,
  "Call jax.distributed.initialize() first (multi-host TPU pods, Slurm,"
  " several processes on one host): every process runs the same command and"
  " they train one model (gradients reduced across processes).",
)
flags.DEFINE_string(
  "coordinator_address",
  None,
  "--distributed: host:port of process 0 (default: detected on TPU, Slurm,"
  " Open MPI).",
)
flags.DEFINE_integer(
  "num_processes", None, "--distributed: the number of processes."
)
flags.DEFINE_integer("process_id", None, "--distributed: this process.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(std_logging.Filter):
  """Drops INFO chatter of Orbax and grain; keeps their warnings."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    noisy = any(f"/{lib}/" in record.pathname for lib in ("orbax", "grain"))
    return record.levelno >= std_logging.WARNING or not noisy


def run(config, workdir: str, mode: str, sources=()) -> dict:
  import jax

  from dblocks_jax import families

  logging.info(
    "JAX process %d/%d, devices: %s",
    jax.process_index(),
    jax.process_count(),
    jax.local_devices(),
  )
  if mode == "train":
    from dblocks_jax import train

    result = train.train_and_evaluate(config, workdir)
    print(describe(result, workdir, families.get(config.model.name)))
  elif mode == "eval":
    from dblocks_jax import evaluation

    result = evaluation.evaluate_checkpoint(config, workdir)
    print(describe(result, workdir, families.get(config.model.name)))
  elif mode == "compare":
    from dblocks_jax import compare

    result = compare.compare(config, workdir)
    print(compare.table(result))
  elif mode == "sample":
    from dblocks_jax import sampling

    result = sampling.sample_checkpoint(config, workdir)
    print(
      f"samples: {result['num_samples']} at step {result['step']}"
      f" ({result['inference_steps']} {result['sampler']} steps, guidance"
      f" {result['guidance_scale']}); wrote {result['png']} and {result['npz']}"
    )
  elif mode == "assemble":
    from dblocks_jax import assemble

    result = assemble.assemble(config, workdir, list(sources))
    print(
      f"assembled {result['num_blocks']} blocks from"
      f" {len(set(result['sources'].values()))} job(s) into {workdir} (step"
      f" {result['step']}); evaluate with --mode=eval or --mode=sample"
    )
  elif mode == "encode":
    from dblocks_jax import encode

    result = encode.encode_dataset(config)
    splits = ", ".join(
      f"{k}: {v['num_examples']}" for k, v in result["splits"].items()
    )
    print(f"latents {result['latent_shape']} ({splits}) in {config.data.dir}")
  else:
    from dblocks_jax import memory, metrics

    os.makedirs(workdir, exist_ok=True)
    result = memory.memory_report(config)
    path = metrics.MetricWriter(workdir).write_json("memory.json", result)
    print(
      f"temp bytes block/e2e: {result['temp_ratio_block_over_e2e']:.3f}"
      f" ({result['block_step']['temp_bytes']:,} /"
      f" {result['e2e_step']['temp_bytes']:,}); wrote {path}"
    )
    if "parallel" in result:
      p = result["parallel"]
      ratio = p["total_ratio_mesh_over_sequential"]
      print(
        f"per-device bytes, mesh of {p['block_groups']} groups / one device"
        f" training the blocks in turn: {ratio:.3f}"
        f" ({p['mesh_step']['total_bytes']:,} /"
        f" {p['sequential_device']['total_bytes']:,})"
      )
  return result


def describe(result: dict, workdir: str, family) -> str:
  """The one line a run prints about its final evaluation."""
  where = f"{result['method']}, step {result['step']}, workdir {workdir}"
  if "complete" in result:
    if not result["complete"]:
      return (
        f"trained blocks {result['blocks']} ({where}); merge the per-block"
        " jobs with --mode=assemble"
      )
    return f"trained all blocks ({where}); evaluate with --mode=eval"
  return f"{family.describe(result)}, workdir {workdir}"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if FLAGS.distributed:
    import jax

    # CPU processes reduce through gloo (GPUs and TPUs use their own).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id,
    )
  try:
    run(FLAGS.config, FLAGS.workdir, FLAGS.mode, FLAGS.sources)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except NonFiniteLossError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)


if __name__ == "__main__":
  app.run(main)
