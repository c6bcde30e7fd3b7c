"""`train_and_evaluate(config, workdir)`: a config's run, start to finish.

The config layer's side of the one trainer: family -> experiment -> Trainer
-> data streams -> `Trainer.fit` (resumable) -> the family's evaluation ->
`eval.json`. Everything below takes explicit arguments (`Trainer`,
`BlockwiseModel`, the tasks); this module, `families/` and `configs/` are the
only readers of a config.
"""

import dataclasses
import os

import ml_collections
from absl import logging

from dblocks_jax import families
from dblocks_jax.families import common, evaluation, runs
from dblocks_jax.training import metrics


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes) the run of `config` in `workdir`; returns eval.json.

  A per-block job (`blocks.train` naming some blocks) evaluates nothing:
  its checkpoints are merged by `--mode=assemble` first.
  """
  # ----- Workdir, experiment, trainer ---------------------------------------
  workdir = os.path.abspath(workdir)
  family = families.get(config.model.name)
  experiment = family.build(config)
  trainer = common.make_trainer(config, experiment, workdir)
  # The trainer holds its own copy of the state; the model's initial arrays
  # (every block's, on the default device) would sit there all run.
  experiment = dataclasses.replace(experiment, model=None)
  # Whatever fails from here on (a data or evaluator check, training, the
  # final evaluation) closes the trainer: checkpoints written so far are
  # finished and the workdir's lock is given back.
  try:
    result = _run(config, family, experiment, trainer, workdir)
  finally:
    trainer.close()
  logging.info("Final: %s", result)
  return result


def _run(config, family, experiment, trainer, workdir: str) -> dict:
  """Everything after the trainer is built; returns eval.json's contents."""
  runs.write_config(workdir, config, trainer.topology)
  logging.info("Topology: %s", trainer.topology)
  logging.info(
    "Layout: blocks %s on %d group(s) x %d data shard(s); %d parameters"
    " held (%s).",
    list(trainer.layout.blocks),
    trainer.layout.num_groups,
    trainer.layout.data_shards,
    trainer.num_params(),
    experiment.method,
  )

  # ----- Data and evaluation ----------------------------------------------
  streams = family.train_data(config, trainer.stream_specs(config.batch_size))
  evaluate = None
  if trainer.can_evaluate():
    evaluate = evaluation.evaluator(family, config, experiment, workdir)

  # ----- Train (resumes from the newest checkpoint) -------------------------
  trainer.fit(
    streams,
    total_steps=config.total_steps,
    evaluate=evaluate,
    eval_every=config.eval_every_steps,
    quiet=True,  # The progress lines go to absl logging.
  )

  # ----- Final evaluation -----------------------------------------------------
  result = {"step": trainer.step_count, "method": experiment.method}
  if trainer.layout.partial:
    result.update(blocks=list(trainer.layout.blocks), complete=False)
  elif not trainer.can_evaluate():
    result.update(blocks=list(trainer.layout.blocks), complete=True)
    logging.info("Evaluate with --mode=eval: no process holds every block.")
  else:
    result.update(evaluate(trainer))
    trainer.writer.write_scalars(trainer.step_count, metrics.numeric(result))
    trainer.writer.write_json("eval.json", result)
  return result
