"""`--mode=eval`: evaluates the newest checkpoint of a run.

Any sampler settings work (`--config.sampler.num_steps=10`, `...method=heun`):
the grid is computed from the config, never stored in a checkpoint. Writes
`eval.json` (or another file name) into the run's workdir.
"""

import os

import ml_collections

from dblocks_jax.families import evaluation, runs
from dblocks_jax.training import metrics


def evaluate_checkpoint(
  config: ml_collections.ConfigDict, workdir: str, output: str = "eval.json"
):
  """Evaluates the newest checkpoint in `workdir`; returns the result,
  also written to `workdir/output` (e.g. one file per decoding setting,
  leaving the training run's eval.json as it was)."""
  workdir = os.path.abspath(workdir)
  family, experiment, trainer = runs.restore_run(config, workdir)
  evaluate = evaluation.evaluator(family, config, experiment, workdir)
  result = evaluate(trainer)
  result.update(step=trainer.step_count, method=experiment.method)
  metrics.MetricWriter(workdir).write_json(output, result)
  trainer.close()
  return result
