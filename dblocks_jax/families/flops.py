"""Training FLOPs from XLA's `cost_analysis()` of the compiled step.

`step_flops` lowers and compiles a run's training step on abstract inputs
(nothing runs) and reads XLA's FLOP count: forward, backward and the
optimizer update, as compiled. XLA counts the body of a loop once whatever
its trip count, so a step must be compiled without loops to be counted:
the block-wise steps have none; a task whose steps draw their depth (the
recurrent-depth baseline: `tasks.base.StepDepth`) is compiled at fixed,
unrolled depths.

Such a step's cost is affine in its drawn depth r beyond the backpropagated
k iterations (those run forward only; any r <= k costs what r = k does).
`training_flops` compiles it at r = k, k + 1, k + 2 and k + 3, checks that
the last two increments agree, and averages the cost over 200,000 draws of
the depth.

`with_training_flops` adds the training FLOPs so far to an evaluator's
result (`families.evaluation.evaluator`, for a family that reports them).
"""

import dataclasses

import jax
import numpy as np

from dblocks_jax import families
from dblocks_jax.families import common
from dblocks_jax.tasks.base import StepDepth, step_depth


def compiled_flops(compiled) -> float:
  """XLA's FLOP count of a compiled program (`jax.stages.Compiled`)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, list | tuple):  # Older JAX: one per device.
    analysis = analysis[0]
  return float(analysis["flops"])


def step_flops(config, experiment=None, block: int = 0) -> float:
  """FLOPs of one training step of `block` (XLA's count, compiled)."""
  family = families.get(config.model.name)
  experiment = experiment or family.build(config)
  trainer = common.make_trainer(common.one_group(config), experiment, None)
  lowered = trainer.lower_step(family.batch_spec(config), block=block)
  return compiled_flops(lowered.compile())


def _drawn_depth(config, experiment, depth: StepDepth) -> dict:
  """Mean FLOPs of a step whose depth is drawn (see the module docstring)."""
  k = depth.backprop

  def at_depth(r):
    fixed = dataclasses.replace(experiment, task=depth.fixed(r))
    return step_flops(config, fixed)

  tracked_only = at_depth(k)  # Every depth r <= k costs this.
  counts = [at_depth(k + i) for i in (1, 2, 3)]
  per_iteration = counts[1] - counts[0]
  if not np.isclose(counts[2] - counts[1], per_iteration, rtol=1e-3):
    raise RuntimeError(
      f"the step's FLOPs are not affine in the depth: {counts}"
    )

  keys = jax.random.split(jax.random.key(0), 200_000)
  depths = np.asarray(jax.vmap(depth.draw)(keys))
  per_depth = np.where(
    depths <= k, tracked_only, counts[0] + (depths - k - 1) * per_iteration
  )
  return {
    "step_flops": float(per_depth.mean()),
    "flops_at_backprop_depth": tracked_only,
    "flops_at_k_plus_1": counts[0],
    "flops_per_forward_iteration": per_iteration,
    "mean_depth_drawn": float(depths.mean()),
  }


def training_flops(config) -> dict:
  """FLOPs per training step (the mean over blocks, or over the drawn
  depths of a task whose steps draw one) and over the run's `total_steps`."""
  family = families.get(config.model.name)
  experiment = family.build(config)
  depth = step_depth(experiment.task)
  if depth is not None:
    out = _drawn_depth(config, experiment, depth)
  elif experiment.plan is not None:
    blocks = range(experiment.plan.num_blocks)
    per_block = [step_flops(config, experiment, b) for b in blocks]
    out = {"step_flops": float(np.mean(per_block)), "block_flops": per_block}
  else:
    out = {"step_flops": step_flops(config, experiment)}
  out["total_steps"] = int(config.total_steps)
  out["train_flops"] = out["step_flops"] * int(config.total_steps)
  return out


def with_training_flops(evaluate, config):
  """`evaluate(trainer) -> dict` plus the training FLOPs so far:
  `step_flops` (`training_flops`, counted once, at the first call) and
  `train_flops` = the trainer's step x step_flops, for quality against
  compute."""
  counted = {}

  def run(trainer) -> dict:
    result = evaluate(trainer)
    if not counted:
      counted.update(training_flops(config))
    result["step_flops"] = counted["step_flops"]
    result["train_flops"] = counted["step_flops"] * trainer.step_count
    return result

  return run
