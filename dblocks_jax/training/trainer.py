"""`Trainer`: the one trainer, for block-wise networks and their baselines.

    trainer = Trainer(model, task, plan, optax.adamw(1e-3), workdir="runs/x")
    trainer.fit(batches, total_steps=3000)       # resumes from the workdir
    trainer.evaluate(test_batches)               # {"accuracy": ...}

It reads top to bottom: arguments -> the run's parts -> `step` (the block
from the schedule, the update, logs, checkpoint) -> `fit` (the loop, with
resume and stop signals) -> inference -> checkpoints. Each part has its own
module in `training/`:

  schedule.py         which block each device group trains at each step,
                      each update's key and learning-rate step (the
                      sequential and per-block rules)
  placement.py        the state on the block x data mesh; offload of the
                      blocks not being trained to host memory
  updates.py          the compiled steps, run on the placed state
  logs.py             step metrics fetched at log boundaries, NaN checks,
                      progress lines and ETA
  run_checkpoints.py  the workdir's checkpoints: save, resume, read-only load
  preemption.py       SIGTERM/SIGINT finish the step, checkpoint and raise
                      `Preempted` (the CLI exits 75; the same command
                      resumes)
  inference.py        predict and evaluate with one inference key

The compiled steps come from `blockwise.steps.make_step` (one per distinct
block structure and optimizer), the set-up the memory planner lowers too.
`optimizer=None` makes an inference-only trainer: it restores the
parameters of any checkpoint, whatever optimizer trained it, predicts,
evaluates and samples, refuses to train or save, and reads its workdir
without taking its lock (which a training run holds: one writer per
workdir). Every batch is checked against the task's fields and the run's
shapes (`tasks.batches`): a bad one is a one-line error naming the field.
"""

import contextlib
import os
from collections.abc import Callable, Mapping

import jax
import optax
from absl import logging

from dblocks_jax.blockwise import inference as inference_lib
from dblocks_jax.blockwise import layout as layout_lib
from dblocks_jax.blockwise import optim
from dblocks_jax.blockwise import parts as parts_lib
from dblocks_jax.blockwise.parts import BlockwiseModel
from dblocks_jax.blockwise.plan import BlockPlan
from dblocks_jax.errors import Preempted
from dblocks_jax.tasks.base import Task
from dblocks_jax.tasks.batches import BatchChecker
from dblocks_jax.training import metrics as metrics_lib
from dblocks_jax.training import run_checkpoints, workdir_lock
from dblocks_jax.training.inference import Inference
from dblocks_jax.training.logs import StepLog
from dblocks_jax.training.placement import Placement
from dblocks_jax.training.preemption import StopSignals, stop_agreed
from dblocks_jax.training.run_checkpoints import RunCheckpoints
from dblocks_jax.training.schedule import RunSchedule
from dblocks_jax.training.streams import Streams
from dblocks_jax.training.topology import layout_topology
from dblocks_jax.training.updates import Updates, initial_state


class Trainer(Inference):
  """Trains `model` on `task` with `optimizer`; see the module docstring.

  Args:
    model: the network split into parts (`BlockwiseModel.build`, or
      `BlockwiseModel.end_to_end` for a baseline trained without noise).
    task: the task (`DiffusionClassification`, ...).
    plan: the block plan; None for a network trained end to end without
      noise (then `model` must have no blocks).
    optimizer: any `optax.GradientTransformation` (chains and schedules
      included), every group of parameters getting its own state of it; a
      callable `block -> transformation` (per-block optimizers); or None
      (default): inference only (restore, predict, evaluate, sample).
    shared_optimizer: the shared parts' transformation (default:
      `optimizer` when it is one transformation; needed with a per-block
      callable when the model has shared parts).
    workdir: where checkpoints and `metrics.jsonl` go (None: nowhere).
    seed: seeds the block schedule, the step keys and the data streams.
    clip_norm: global-norm gradient clipping over what a step updates
      (0 = off; the official code clips at 1).
    schedule: the block order: "uniform" (random, the paper) or
      "round_robin".
    train_blocks: the blocks this run trains (empty = all; a subset makes a
      per-block job, whose checkpoints `assemble` merges).
    block_groups: G, device groups training blocks at once.
    data_shards: D, devices per group (0 = all devices // G).
    accumulation_steps: micro-batches per optimizer step.
    schedule_step: "global" (schedules follow the global step, the official
      rule) or "own" (each group's schedule counts its own updates).
    learning_rate: the schedule, for logging only (optional).
    total_steps: the run's length in block updates (progress, ETA; with the
      per-block rule, the learning rate of update n is that of step n B).
    log_every: steps between metric lines (and NaN checks).
    checkpoint_every: steps between checkpoints.
    keep_checkpoints: how many of the newest checkpoints are kept.
    tensorboard: also write TensorBoard summaries (needs TensorFlow).
    topology: extra fields a resumed run must agree on (e.g. the method).
    offload: keep the held blocks that are not being trained in host
      memory (`training.placement`).
    batch_spec: the shapes of one batch ({name: jax.ShapeDtypeStruct of
      [batch, ...]}; the batch size is free); every batch, training or
      inference, must match them. None: the first training batch's.
  """

  def __init__(
    self,
    model: BlockwiseModel,
    task: Task,
    plan: BlockPlan | None,
    optimizer: optax.GradientTransformation
    | Callable[[int], optax.GradientTransformation]
    | None = None,
    *,
    shared_optimizer: optax.GradientTransformation | None = None,
    workdir: str | None = None,
    seed: int = 0,
    clip_norm: float = 0.0,
    schedule: str = "uniform",
    train_blocks=(),
    block_groups: int = 1,
    data_shards: int = 0,
    accumulation_steps: int = 1,
    schedule_step: str = "global",
    learning_rate: optax.Schedule | None = None,
    total_steps: int = 0,
    log_every: int = 100,
    checkpoint_every: int = 1000,
    keep_checkpoints: int = 2,
    tensorboard: bool = False,
    topology: Mapping | None = None,
    offload: bool = False,
    batch_spec: Mapping | None = None,
  ):
    _check_arguments(
      model,
      task,
      plan,
      accumulation_steps=accumulation_steps,
      log_every=log_every,
      checkpoint_every=checkpoint_every,
      keep_checkpoints=keep_checkpoints,
    )
    self.workdir = None if workdir is None else os.path.abspath(workdir)
    self.seed = int(seed)
    self.total_steps = int(total_steps)
    self.log_every = int(log_every)
    self.checkpoint_every = int(checkpoint_every)

    # ----- The layout and the schedule ---------------------------------------
    sharing = "shared" if model.shared and model.blocks else "independent"
    self.layout = layout_lib.Layout.create(
      model.num_blocks,
      train_blocks=train_blocks,
      num_groups=block_groups,
      data_shards=data_shards,
      layers_per_block=plan.layers_per_block if plan else (),
      sharing=sharing if model.blocks else "shared",
    )
    self.schedule = RunSchedule(
      schedule, self.layout, self.seed, schedule_step, blockwise=bool(plan)
    )
    self.per_block = self.schedule.per_block
    self._topology = dict(topology or {})
    self._topology.update(layout_topology(plan, self.layout, sharing))

    # ----- Inference, optimizers and the state, placed -----------------------
    graphdefs, shared, blocks, fixed = parts_lib.split(model)
    checker = BatchChecker(
      self._task_fields() if hasattr(task, "batch_fields") else None,
      type(task).__name__,
      batch_spec,
    )
    Inference.__init__(self, task, graphdefs, plan, self.seed, checker)
    self.optimizers = optim.GroupOptimizers.create(
      optimizer,
      shared_optimizer,
      num_blocks=model.num_blocks,
      held_blocks=self.layout.blocks if model.num_blocks else (),
      has_shared=bool(jax.tree.leaves(shared["params"])),
      stacked_groups=self.layout.num_groups if self.layout.stacked else 0,
    )
    self.placement = Placement(
      self.layout, offload=offload, blockwise=plan is not None
    )
    self.placement.place(
      initial_state(
        self.optimizers,
        shared,
        blocks,
        fixed,
        held=self.layout.blocks,
        to_host=self.placement.offload,
      )
    )

    # ----- Steps, logs, checkpoints -------------------------------------------
    self._lock = None
    if self.trains and self.workdir is not None and jax.process_index() == 0:
      self._lock = workdir_lock.acquire(self.workdir)  # One writer.
    # An inference-only trainer writes nothing into its workdir.
    self.writer = metrics_lib.MetricWriter(
      self.workdir if self.trains else None, tensorboard=tensorboard
    )
    self.checkpoints = RunCheckpoints(self.workdir, int(keep_checkpoints))
    self.log = StepLog(
      self.writer,
      blockwise=plan is not None,
      kept=self.checkpoints.kept,
    )
    self.updates = Updates(
      task,
      self.graphdefs,
      plan,
      self.optimizers,
      self.placement,
      self.schedule,
      clip_norm=float(clip_norm),
      accumulation_steps=int(accumulation_steps),
      learning_rate=learning_rate,
    )
    self._streams: Streams | None = None

  def _task_fields(self):
    """`example -> task.batch_fields(parts, example)`, the parts those of
    the first block this run holds (e.g. its target table)."""

    def fields(example):
      block = self.layout.blocks[0] if self.layout.blocks else 0
      arrays = inference_lib.inference_arrays(self.state)
      parts = inference_lib.parts_for_block_fn(self.graphdefs, arrays)(block)
      return self.task.batch_fields(parts, example)

    return fields

  # ----- What the run is ------------------------------------------------------

  @property
  def blockwise(self) -> bool:
    return self.plan is not None

  @property
  def trains(self) -> bool:
    """Whether this trainer has an optimizer (False: inference only)."""
    return self.optimizers is not None

  @property
  def mesh(self):
    return self.placement.mesh

  @property
  def offload(self) -> bool:
    return self.placement.offload

  def memory_kind(self, block: int) -> str | None:
    """Where a held block's state is placed (`Placement.memory_kind`)."""
    return self.placement.memory_kind(block)

  @property
  def topology(self) -> dict:
    """What a resumed run must agree on (recorded in every checkpoint)."""
    return dict(self._topology)

  @property
  def batch_spec(self) -> dict | None:
    """The run's batch shapes, {name: [shape after the batch axis,
    dtype]} (given, or the first training batch's; None: none seen yet)."""
    return self._batches.describe()

  @property
  def step_count(self) -> int:
    """Block updates done (the global step)."""
    return int(self.placement.state["step"])

  @property
  def state(self) -> dict:
    """The training state, every block as its own group: {"step",
    "updates" [B], "shared", "blocks": [{"params", "opt_state", "rest"} or
    {} (not held)], "fixed"} (`Placement.view`; with offload, the blocks
    not being trained are in host memory)."""
    return self.placement.view()

  def num_params(self) -> int:
    """Parameters this process holds (shared, its blocks, fixed)."""
    state = self.state
    groups = [state["shared"], state["fixed"], *state["blocks"]]
    return int(
      sum(x.size for g in groups if g for x in jax.tree.leaves(g["params"]))
    )

  def can_evaluate(self) -> bool:
    """Whether this process can run inference (it holds every block)."""
    return not self.layout.partial and not (
      self.layout.stacked and jax.process_count() > 1
    )

  def next_blocks(self) -> list[int]:
    """The block each device group trains at the next `step`."""
    return self.schedule.blocks_at(self.step_count)

  def stream_specs(self, batch_size: int) -> dict:
    """The data streams this process feeds, for a global batch size.

    Returns:
      {stream: (seed, local batch size, (shard index, shard count))}, where
      stream is None (the one stream of the sequential rule) or a block
      (per-block rule); the shard says which part of the data this process
      reads among the processes that feed the same group.
    """
    return self.placement.stream_specs(batch_size, self.seed, self.per_block)

  def _require_optimizer(self, action: str) -> None:
    if not self.trains:
      raise ValueError(
        f"this Trainer was built with optimizer=None (inference only): it"
        f" restores, predicts, evaluates and samples, but cannot {action};"
        " pass an optax transformation to train."
      )

  # ----- One step ----------------------------------------------------------

  def step(self, batch) -> dict:
    """One step: G block updates (one per device group).

    Args:
      batch: the rows of the global batch this process holds: one batch
        (the sequential rule), or {block: batch} for the blocks trained now
        (the per-block rule; `next_blocks` says which).

    Returns:
      The step's metrics (device arrays; `log_every` steps are fetched,
      checked for NaN and logged).

    Raises:
      ValueError, TypeError: the batch does not fit the task or the run's
        shapes (the message names the field); nothing was trained.
    """
    self._require_optimizer("train")
    blocks_now = self.next_blocks()
    self._check_training_batch(batch, blocks_now)
    metrics = self.updates.run(blocks_now, batch)
    done = self.step_count
    self.log.add(done, blocks_now, metrics)
    if self.schedule.crossed(done, self.log_every) or done == self.total_steps:
      self.flush()
    if self.workdir and self.schedule.crossed(done, self.checkpoint_every):
      self.save()
    return metrics

  def _check_training_batch(self, batch, blocks_now: list[int]) -> None:
    if not self.per_block:
      self._batches.check(batch, "train")
      return
    if not isinstance(batch, Mapping):
      raise TypeError(
        "with blocks split over groups or jobs, step() takes {block: batch}"
        f" for the blocks trained now (next_blocks()); got"
        f" {type(batch).__name__}."
      )
    for b in blocks_now:
      if b in batch:
        self._batches.check(batch[b], "train")

  def lower_step(self, batch_spec: Mapping, block: int = 0):
    """The step of `block`'s structure lowered on abstract inputs, for
    `.compile().memory_analysis()` (nothing runs).

    Args:
      batch_spec: {name: jax.ShapeDtypeStruct} of one global batch (per
        group when G > 1).
      block: a block of the structure to lower.
    """
    self._require_optimizer("lower a training step")
    return self.updates.lower(batch_spec, block)

  def flush(self) -> dict:
    """Fetches the pending step metrics, stops on NaN, writes one line.

    Raises:
      NonFiniteLossError: a loss is NaN or Inf (the newest checkpoint on
        disk is from before it).
    """
    return self.log.flush(self.step_count, self.total_steps)

  # ----- The loop -----------------------------------------------------------

  def fit(
    self,
    data,
    *,
    total_steps: int | None = None,
    evaluate: Callable[["Trainer"], dict] | None = None,
    eval_every: int = 0,
    quiet: bool = False,
  ) -> "Trainer":
    """Trains to `total_steps` block updates, resuming from the workdir.

    Args:
      data: the training batches (process-local rows): an iterator (the
        sequential rule), or {stream: iterator} as `stream_specs` lists
        them. grain iterators' positions are checkpointed with the state.
      total_steps: the run's length (default: the constructor's).
      evaluate: called as `evaluate(trainer)` every `eval_every` steps; its
        numbers are logged as eval/NAME.
      eval_every: steps between evaluations (0 = none during the run).
      quiet: print no progress on stderr (the lines still go to absl
        logging and, with a workdir, to `metrics.jsonl`).
    """
    self._require_optimizer("train")
    if total_steps is not None:
      self.total_steps = int(total_steps)
    if self.total_steps < 1:
      raise ValueError("total_steps must be at least 1.")
    self._streams = Streams(data if isinstance(data, Mapping) else {None: data})
    if self.checkpoints.latest() is not None:
      self.restore(data=self._streams)
    start = self.step_count
    end = self.schedule.end_step(self.total_steps)  # Per-block jobs: sooner.
    self.log.start(start, end, report=not quiet and jax.process_index() == 0)
    if start < end:
      resumed = f"resumed at step {start}, " if start else ""
      self.log.say(
        f"Training to step {end} ({resumed}progress every"
        f" {self.log_every} steps; the first step compiles)."
      )
    first = True
    try:
      with StopSignals() as stop:
        while self.step_count < end:
          self.step(self._next_batch(self.next_blocks()))
          if first:
            # The rate is measured from here: compiling is not a step.
            self.log.progress.update(self.step_count)
            first = False
          done = self.step_count
          # Stop before an evaluation: a preempted run's time is short.
          at_log = self.schedule.crossed(done, self.log_every)
          if stop_agreed(stop.signal_name, at_log) and done < end:
            self._stop(stop.signal_name)
          due = self.schedule.crossed(done, eval_every)
          if evaluate is not None and due and done < end:
            logging.info("Evaluating at step %d.", done)
            with self.log.progress.paused():
              result = evaluate(self)
            self.log.evaluation(done, result)
        self.flush()
        if self.workdir:
          self.save()
    finally:
      self.log.report = False
      # An error or NaN must not leave the newest save half written.
      self.checkpoints.wait()
      self.writer.flush()
    return self

  def _next_batch(self, blocks_now: list[int]):
    if not self.per_block:
      return self._streams.next(None)
    # This process feeds the blocks of the groups whose devices it holds.
    held = self._streams.iterators
    return {b: self._streams.next(b) for b in blocks_now if b in held}

  def _stop(self, signal_name: str | None) -> None:
    """Checkpoints, logs one line and raises `Preempted`."""
    signal_name = signal_name or "a stop signal on another process"
    step = self.step_count
    where = "no workdir: nothing saved"
    if self.workdir:
      self.save()
      self.checkpoints.wait()
      where = f"checkpoint in {self.workdir}; run the same command to resume"
    message = f"{signal_name} received: stopped at step {step} ({where})."
    logging.warning(message)
    raise Preempted(message, signal_name, step)

  # ----- Inference (the base class, `training.inference`) --------------------

  def arrays(self) -> dict:
    """What inference reads (`Placement.inference_arrays`)."""
    return self.placement.inference_arrays()

  # ----- Checkpoints (`training.run_checkpoints`) -----------------------------

  def save(self) -> bool:
    """Checkpoints the state (and the data streams' positions), after
    checking the pending metrics for NaN. Returns whether a save started
    (False: this step is saved already)."""
    self._require_optimizer(
      "save (its checkpoints would hold no optimizer state)"
    )
    self.flush()
    metadata = {"topology": self.topology}
    if self._batches.describe() is not None:
      metadata["batch_spec"] = self._batches.describe()
    progress = self.log.progress
    with progress.paused() if progress else contextlib.nullcontext():
      return self.checkpoints.save(
        self.step_count,
        self.state,
        streams=Streams.checkpointable_of(self._streams),
        metadata=metadata,
      )

  def restore(self, *, step: int | None = None, data=None) -> int:
    """Restores this run's newest checkpoint (or `step`) and the data
    streams' positions.

    A damaged newest checkpoint is skipped (with a warning) and moved to
    `checkpoints.damaged/`; the newest intact one is restored. An
    inference-only trainer (optimizer=None) reads the parameters only,
    read-only, as `load_checkpoint` does.

    Raises:
      TopologyError: the checkpoint's topology differs from this run's.
      FileNotFoundError: there is no checkpoint.
      CheckpointError: no checkpoint is intact.
    """
    if not self.trains:
      if self.workdir is None:
        raise ValueError(
          "this Trainer has no workdir; pass workdir=... or use"
          " load_checkpoint(workdir)."
        )
      return self.load_checkpoint(self.workdir, step=step)
    state, metadata = self.checkpoints.restore(
      self.placement.restore_target(),
      self.topology,
      step=step,
      streams=Streams.checkpointable_of(data),
      partial=False,
    )
    self._load(state, metadata)
    logging.info("Resumed from step %d.", self.step_count)
    return self.step_count

  def load_checkpoint(self, workdir: str, *, step: int | None = None) -> int:
    """Loads the newest checkpoint (or `step`) of the run in `workdir`,
    read-only (nothing is written there): for evaluation, sampling and
    assembly. A damaged newest checkpoint is skipped with a warning. An
    inference-only trainer (optimizer=None) reads the parameters and
    other model state only, whatever optimizer trained the run.

    Raises:
      ConfigError: `workdir` holds no checkpoint.
      CheckpointError: no checkpoint is intact.
      TopologyError: its topology differs from this trainer's.
    """
    state, metadata = run_checkpoints.load_checkpoint(
      workdir,
      self.placement.restore_target(),
      self.topology,
      step=step,
      partial=not self.trains,  # The parameters, not the optimizer states.
    )
    self._load(state, metadata)
    return self.step_count

  def _load(self, state: dict, metadata: dict) -> None:
    self.placement.place(state)
    self._batches.load(metadata.get("batch_spec"))

  def close(self) -> None:
    """Waits for checkpoint writes; closes the metrics file; gives back the
    workdir's lock."""
    try:
      self.checkpoints.close()
      self.writer.close()
    finally:
      if self._lock is not None:
        workdir_lock.release(self._lock)
        self._lock = None


def _check_arguments(model, task, plan, **counts) -> None:
  """One-line errors for arguments that cannot make a run."""
  if not isinstance(model, BlockwiseModel):
    raise TypeError(
      f"model={type(model).__name__} is not a BlockwiseModel; build one"
      " with BlockwiseModel.build(plan, ...) or BlockwiseModel.end_to_end."
    )
  if not isinstance(task, Task):
    raise TypeError(
      f"task={type(task).__name__} is not a Task (it needs loss and"
      " predict); see dblocks_jax.tasks."
    )
  if plan is not None and not isinstance(plan, BlockPlan):
    raise TypeError(f"plan={plan!r} is not a BlockPlan (or None).")
  if plan is None and model.num_blocks:
    raise ValueError(
      f"the model has {model.num_blocks} blocks but plan=None; pass the"
      " BlockPlan the model was built from."
    )
  if plan is not None and plan.num_blocks != model.num_blocks:
    raise ValueError(
      f"the model has {model.num_blocks} blocks but the plan"
      f" {plan.num_blocks}; build the model from this plan."
    )
  for name, value in counts.items():
    if int(value) < 1:
      raise ValueError(f"{name}={value} must be at least 1.")
