"""A run's inference: predictions and evaluation with its current parameters
(the base of `Trainer`, whose inference-only form, optimizer=None, is this
plus restoring a checkpoint).

Randomness. `evaluate` draws batch i's noise from fold_in(key, i) and
`predict(batch)` is evaluate's batch 0 (fold_in(key, 0)), with one default
key, `inference_key` = key(seed + 1) (apart from the training steps' keys
fold_in(key(seed), step)): the same weights give the same numbers through
both. Jitted functions are built once per sampler and kept, so evaluating
again during training reuses their compilation.
"""

from collections.abc import Callable

import jax

from dblocks_jax.blockwise import inference
from dblocks_jax.blockwise.plan import BlockPlan
from dblocks_jax.tasks.base import Sampler, Task
from dblocks_jax.tasks.batches import BatchChecker


class Inference:
  """Predicts and evaluates with the arrays `arrays()` returns (a subclass
  defines `arrays`).

  Args:
    task: the run's task.
    graphdefs: the model's graph definitions (`parts.split`).
    plan: the block plan (None: an end-to-end network).
    seed: the run's seed (the default key is key(seed + 1)).
    batches: checks every batch against the task's fields and the run's
      shapes.
  """

  def __init__(
    self,
    task: Task,
    graphdefs,
    plan: BlockPlan | None,
    seed: int,
    batches: BatchChecker,
  ):
    self.task = task
    self.graphdefs = graphdefs
    self.plan = plan
    self.inference_key = jax.random.key(seed + 1)
    self._batches = batches
    self._compiled = {}

  def arrays(self) -> dict:
    """What inference reads: {"shared", "blocks", "fixed"} of {"params",
    "rest"}."""
    raise NotImplementedError

  def sampler(
    self, num_steps: int = 0, grid: str = "", method: str = "euler"
  ) -> Sampler | None:
    """The routed sampler of the plan (None without a plan)."""
    if self.plan is None:
      return None
    return Sampler.of(self.plan, num_steps, grid, method)

  def compiled(self, key: tuple, build: Callable[[], Callable]) -> Callable:
    """`build()` once per `key`, then the same function (evaluating again
    during training reuses the compilation). The key must name everything
    `build` closes over besides the task and graph definitions."""
    if key not in self._compiled:
      self._compiled[key] = build()
    return self._compiled[key]

  def predict_fn(self, sampler: Sampler | None) -> Callable:
    """The jitted `predict(arrays, batch, key)` of a sampler (cached)."""
    return self.compiled(
      ("predict", sampler.key if sampler else None),
      lambda: inference.make_predict(self.task, self.graphdefs, sampler),
    )

  def predict(self, batch, *, key=None, sampler: Sampler | None = None):
    """`task.predict` with the current parameters (evaluation mode): what
    `evaluate(batches, key=key)` predicts for its first batch.

    Args:
      batch: the inputs, e.g. {"image": [b, ...]} (checked as training
        batches are, without the fields only training reads).
      key: PRNG key; the noise is drawn from fold_in(key, 0) (default:
        `inference_key`).
      sampler: the routed grid (default: `sampler()`, B Euler steps).
    """
    self._batches.check(batch, "predict")
    fn = self.predict_fn(self.sampler() if sampler is None else sampler)
    key = self.inference_key if key is None else key
    return fn(self.arrays(), batch, jax.random.fold_in(key, 0))

  def evaluate(
    self, batches, *, sampler: Sampler | None = None, key=None
  ) -> dict:
    """`task.evaluate` over `batches` (e.g. accuracy).

    Args:
      batches: evaluation batches (a `mask` field marks padding rows); each
        is checked as training batches are.
      sampler: the routed grid (default: B Euler steps).
      key: PRNG key; batch i's noise is drawn from fold_in(key, i)
        (default: `inference_key`).
    """
    if not hasattr(self.task, "evaluate"):
      raise TypeError(
        f"{type(self.task).__name__} has no evaluate(); use predict()."
      )
    fn = self.predict_fn(self.sampler() if sampler is None else sampler)
    arrays = self.arrays()
    key = self.inference_key if key is None else key

    def predict(batch, k):
      self._batches.check(batch, "evaluate")
      return fn(arrays, batch, k)

    return self.task.evaluate(predict, batches, key)
