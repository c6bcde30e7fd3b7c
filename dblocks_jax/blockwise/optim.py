"""Optimizer and learning-rate schedule from the config.

Every group of parameters (the shared parts, and each block) gets its own
optimizer state from the same transformation, so each has its own Adam step
count and inactive blocks are neither decayed nor moved (PyTorch skips
parameters whose grad is None; optax would apply stale momentum and decay to
zero gradients). The learning rate follows the GLOBAL step, as in the
official code: it is injected into each state at every step.
"""

import optax

from dblocks_jax.errors import ConfigError

SCHEDULES = ("cosine", "constant")


def make_optimizer(opt_config) -> optax.GradientTransformation:
  """AdamW with an injectable learning rate (clipping is done by the step)."""
  if opt_config.name != "adamw":
    raise ConfigError(
      f"optimizer.name={opt_config.name!r} is unknown; only 'adamw' is"
      " supported."
    )
  return optax.inject_hyperparams(optax.adamw)(
    learning_rate=opt_config.learning_rate,
    b1=opt_config.b1,
    b2=opt_config.b2,
    eps=opt_config.eps,
    weight_decay=opt_config.weight_decay,
  )


def learning_rate_fn(opt_config, total_steps: int) -> optax.Schedule:
  """Linear warmup, then cosine to `min_learning_rate` or constant."""
  warmup = int(opt_config.warmup_steps)
  if warmup < 0 or warmup > total_steps:
    raise ConfigError(
      f"optimizer.warmup_steps={warmup} must lie in [0, total_steps"
      f"={total_steps}]."
    )
  peak = opt_config.learning_rate
  if opt_config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=peak,
      warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1),
      end_value=opt_config.min_learning_rate,
    )
  if opt_config.schedule == "constant":
    return optax.join_schedules(
      [
        optax.linear_schedule(0.0, peak, max(warmup, 1)),
        optax.constant_schedule(peak),
      ],
      [warmup],
    )
  raise ConfigError(
    f"optimizer.schedule={opt_config.schedule!r} is unknown; choose one of"
    f" {SCHEDULES}."
  )
