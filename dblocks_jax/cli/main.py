"""Command line: python -m dblocks_jax.main --config=configs/NAME.py[:args]
--workdir=DIR [--mode=train|eval|compare|sample|memory|plan|encode|assemble]
[--sources=DIR,...] [--distributed [--coordinator_address=HOST:PORT
--num_processes=N --process_id=I]].

Kept short on purpose: the work is in `train.train_and_evaluate` (and the
other modes' modules), which tests and notebooks call directly.

Exit statuses: 0 done; 2 bad input (a config field, a missing or damaged
data or weight file; one `error:` line on stderr); 3 a NaN loss (naming the
step and block); 4 no intact checkpoint, or a checkpoint write failed; 5 the
workdir is in use by another live run; 75 stopped by SIGTERM or SIGINT after
writing a checkpoint (run the same command to resume).
"""

import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from dblocks_jax import errors

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
  [
    "train",
    "eval",
    "compare",
    "sample",
    "memory",
    "plan",
    "encode",
    "assemble",
  ],
  "train (and evaluate), eval (newest checkpoint), compare (DiffusionBlocks"
  " and its end-to-end baseline in one command: accuracy or FID, compiled"
  " step memory, wall time), sample (a generator's"
  " newest checkpoint: PNG grid and .npz), memory (compiled step memory),"
  " plan (the B, per-device batch and remat that fit plan.device_memory),"
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


# Errors printed as one `error:` line, with their exit statuses.
ONE_LINE_ERRORS = {
  errors.ConfigError: errors.EXIT_CONFIG,
  errors.MissingExtraError: errors.EXIT_CONFIG,  # Names the extra to install.
  errors.NonFiniteLossError: errors.EXIT_NON_FINITE,
  errors.CheckpointError: errors.EXIT_CHECKPOINT,
  errors.WorkdirLockedError: errors.EXIT_LOCKED,
}


class _QuietLibraries(std_logging.Filter):
  """Keeps the log readable: drops the INFO chatter of Orbax and grain and
  shows their errors without tracebacks (the `error:` line that ends the run
  says what failed and what to do), and drops asyncio's reports of the
  futures that a failed Orbax write leaves behind."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if "/asyncio/" in record.pathname and (
      "exception was never retrieved" in record.getMessage()
    ):
      return False
    noisy = any(f"/{lib}/" in record.pathname for lib in ("orbax", "grain"))
    if noisy and record.exc_info:
      record.exc_info, record.exc_text = None, None
    return record.levelno >= std_logging.WARNING or not noisy


def _quiet_unraisable(unraisable) -> None:
  """Drops the 'Event loop is closed' errors of Orbax's write threads that
  finish after a failed save; passes anything else on."""
  error = unraisable.exc_value
  if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
    return
  sys.__unraisablehook__(unraisable)


def run(config, workdir: str, mode: str, sources=(), argv=()) -> dict:
  """Runs `mode`, holding the workdir's lock (one writer per workdir)."""
  import jax

  logging.info(
    "JAX process %d/%d, devices: %s",
    jax.process_index(),
    jax.process_count(),
    jax.local_devices(),
  )
  if mode == "encode":  # Writes into data.dir, not the workdir.
    return _run(config, workdir, mode, sources)
  from dblocks_jax.training.workdir_lock import WorkdirLock

  needs_run = mode in ("eval", "sample")  # Never create a missing workdir.
  with WorkdirLock(
    workdir, process_index=jax.process_index(), create=not needs_run
  ):
    return _run(config, workdir, mode, sources, argv)


def _run(config, workdir: str, mode: str, sources, argv=()) -> dict:
  from dblocks_jax import families

  if mode == "train":
    from dblocks_jax.families import train

    result = train.train_and_evaluate(config, workdir)
    print(describe(result, workdir, families.get(config.model.name)))
  elif mode == "eval":
    from dblocks_jax.cli import evaluation

    result = evaluation.evaluate_checkpoint(config, workdir)
    print(describe(result, workdir, families.get(config.model.name)))
  elif mode == "compare":
    from dblocks_jax.cli import compare

    result = compare.compare(config, workdir)
    print(compare.table(result))
  elif mode == "sample":
    from dblocks_jax.cli import sampling

    result = sampling.sample_checkpoint(config, workdir)
    print(families.get(config.model.name).describe_samples(result))
  elif mode == "assemble":
    from dblocks_jax.cli import assemble

    result = assemble.assemble(config, workdir, list(sources))
    print(
      f"assembled {result['num_blocks']} blocks from"
      f" {len(set(result['sources'].values()))} job(s) into {workdir} (step"
      f" {result['step']}); evaluate with --mode=eval or --mode=sample"
    )
  elif mode == "plan":
    from dblocks_jax.cli import planner

    result = planner.plan(config, workdir, argv)
    print(planner.table(result))
  elif mode == "encode":
    from dblocks_jax.cli import encode

    result = encode.encode_dataset(config)
    splits = ", ".join(
      f"{k}: {v['num_examples']}" for k, v in result["splits"].items()
    )
    print(f"latents {result['latent_shape']} ({splits}) in {config.data.dir}")
  else:
    from dblocks_jax.cli import memory
    from dblocks_jax.training import metrics

    os.makedirs(workdir, exist_ok=True)
    result = memory.memory_report(config)
    path = metrics.MetricWriter(workdir).write_json("memory.json", result)
    print("\n".join(memory.summary(result)))
    print(f"wrote {path}")
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
  sys.unraisablehook = _quiet_unraisable
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
    run(FLAGS.config, FLAGS.workdir, FLAGS.mode, FLAGS.sources, sys.argv[1:])
  except errors.Preempted:
    sys.exit(errors.EXIT_PREEMPTED)  # The trainer logged why, and where.
  except tuple(ONE_LINE_ERRORS) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(next(v for k, v in ONE_LINE_ERRORS.items() if isinstance(e, k)))


if __name__ == "__main__":
  app.run(main)
