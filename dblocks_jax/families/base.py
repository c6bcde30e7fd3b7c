"""The family protocol: what a model family gives the command line.

    experiment = family.build(config)                 # model, task, plan
    streams = family.train_data(config, specs)        # {stream: iterator}
    evaluate = family.evaluator(config, experiment, workdir)
    result = evaluate(trainer)                        # eval.json fields
    print(family.describe(result))

A generator also has `write_samples(config, experiment, trainer, workdir)
-> dict` and `describe_samples(result) -> str`, which `--mode=sample` uses.
A family whose `reports_training_flops` is true has its evaluation add the
training FLOPs so far (`evaluation.evaluator`, which the training and
`--mode=eval` call in place of `evaluator`).

`build` reads the config (this is the config layer: models, tasks and the
engine below it take explicit arguments); `batch_spec` gives the shapes of
one training batch, for the compiled-memory report.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

from dblocks_jax.blockwise.parts import BlockwiseModel
from dblocks_jax.blockwise.plan import BlockPlan
from dblocks_jax.tasks.base import Task

METHODS = ("dblocks", "e2e")


@dataclasses.dataclass
class Experiment:
  """What a run trains.

  Attributes:
    method: "dblocks" (block-wise) or "e2e" (the end-to-end baseline).
    model: the network split into parts.
    task: the loss and the inference procedure.
    plan: the block plan; None for a baseline trained without noise (the ViT
      classifier), a one-block plan for a diffusion baseline (DiT at B=1).
  """

  method: str
  model: BlockwiseModel
  task: Task
  plan: BlockPlan | None

  @property
  def blockwise(self) -> bool:
    """Trained through noise ranges and routed sampling."""
    return self.plan is not None


@runtime_checkable
class Family(Protocol):
  """A model family (see the module docstring)."""

  def build(self, config, *, held_blocks=None) -> Experiment:
    """The experiment of `config` (`held_blocks`: the blocks a per-block
    job builds as arrays; None = all)."""
    ...

  def train_data(self, config, specs: Mapping) -> dict:
    """{stream: iterator of process-local batches} for
    `Trainer.stream_specs` (seed, local batch size, shard)."""
    ...

  def batch_spec(self, config) -> dict:
    """{name: jax.ShapeDtypeStruct} of one global training batch."""
    ...

  def evaluator(
    self, config, experiment: Experiment, workdir: str
  ) -> Callable[[Any], dict]:
    """`evaluate(trainer) -> eval.json fields` (built before training, so
    that a missing file fails early)."""
    ...

  def describe(self, result: Mapping) -> str:
    """The one line the command line prints about a final evaluation."""
    ...
