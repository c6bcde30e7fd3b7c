"""`Trainer`: the one trainer, for block-wise networks and their baselines.

    trainer = Trainer(model, task, plan, optax.adamw(1e-3), workdir="runs/x")
    trainer.fit(batches, total_steps=3000)       # resumes from the workdir
    trainer.evaluate(test_batches)               # {"accuracy": ...}

It reads top to bottom: layout and mesh -> state (split, placed) -> compiled
steps -> `step` (block choice, update, logs, NaN check, checkpoint) -> `fit`
(the loop, with resume) -> inference (`predict`, `evaluate`) -> checkpoints.

Layout. The devices form a `block` x `data` mesh of G groups of D devices
(`blockwise.layout`). G = 1 (the default) trains one block at a time on every
device, with the batch split along `data` and gradients reduced across
devices and processes; G > 1 trains G blocks at once, one per group.

Offload (`offload=True`). The parameters and optimizer states of the held
blocks that are not being trained live in host memory (the memory kind
`pinned_host`, or `unpinned_host` on a backend without it): before the step
of block b, b's state is copied to device memory; it stays there while the
schedule keeps drawing b and goes back to host memory when another block is
drawn (a repeated block moves no bytes). The device holds one block's
state, the shared parts and the fixed parts instead of every block's. The
moves change no value: a run with offload is bit-identical to one without,
and checkpoints read and write the arrays wherever they are. Inference
(`arrays`) copies every block's parameters (not its optimizer state) to the
device for its duration. On the CPU backend the host memory kinds and
`device` are the same RAM: the placement runs as on an accelerator and saves
nothing. With G > 1 a group's blocks are stacked in one array that its step
reads whole, so offload needs one block per group (and then moves nothing).

Update rules. A run of every block on one group follows the official
sequential rule: global step s trains the block the schedule draws for s,
with the key fold_in(seed, s), the learning rate of step s and the next batch
of one data stream. A run whose blocks are split (G > 1, or a per-block job
training some blocks) follows the per-block rule: update n of block b uses
the key fold_in(fold_in(seed, b), n), the learning rate of step n B and the
next batch of block b's own stream, so that any split of the blocks over
groups and jobs trains the same model (with the round-robin schedule).

Metrics and checkpoints. Every `log_every` steps the window of step metrics
is fetched, checked for NaN (a non-finite loss stops the run, naming the
step and the block, before anything is saved) and written to
`metrics.jsonl` with steps/s and the ETA. With a workdir, a checkpoint
(Orbax: parameters, every optimizer state, the step and the data streams'
positions) is written every `checkpoint_every` steps, and `fit` resumes from
the newest one (the newest intact one: a damaged checkpoint is skipped and
moved to `checkpoints.damaged/`). A changed topology is refused.

Optimizers. `optimizer` is one optax transformation (every group gets its
own state of it), a callable `block -> transformation` with
`shared_optimizer` for the shared parts (per-block optimizers: e.g. block 0
at its own learning rate), or None: an inference-only trainer that restores
the parameters of any checkpoint, whatever optimizer trained it, predicts,
evaluates and samples, and refuses to train or save. It reads its workdir
without taking its lock.

Batches. Every batch is checked at the boundary against the task's fields
(`batch_fields`, `tasks.batches`) and the run's shapes (`batch_spec`, or
the first training batch's, recorded in each checkpoint): a missing field,
a wrong dtype or shape, rows that differ between fields, and class or
token ids out of range are one-line errors that name the field. A NaN loss
says whether its step's batch held NaN or Inf.

Progress. `fit` prints the step, loss, steps/s and ETA to stderr every
`log_every` steps (whether or not absl logging is configured); `quiet=True`
leaves them to absl logging and `metrics.jsonl` (the command line's way).

Inference randomness. `evaluate` draws batch i's noise from fold_in(key, i)
and `predict(batch)` is evaluate's batch 0 (fold_in(key, 0)), with one
default key, `inference_key` = key(seed + 1): the same weights give the
same numbers through both.

Preemption. During `fit`, SIGTERM (what TPU VMs and Slurm send) and SIGINT
finish the current step (or evaluation), write a checkpoint, log one line
and raise `Preempted` (the CLI exits with status 75); the same command
resumes. The evaluation due at the stopping step is skipped. A second SIGINT
stops at once. A multi-process run agrees on the stop at the
next `log_every` boundary. A workdir has one writer: a second Trainer (in
another process) on a workdir whose run is alive is refused.
"""

import collections
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from dblocks_jax.blockwise import inference, optim, steps
from dblocks_jax.blockwise import layout as layout_lib
from dblocks_jax.blockwise import parts as parts_lib
from dblocks_jax.blockwise.parts import BlockwiseModel
from dblocks_jax.blockwise.plan import BlockPlan
from dblocks_jax.blockwise.schedule import BlockSchedule
from dblocks_jax.errors import NonFiniteLossError, Preempted
from dblocks_jax.tasks.base import Sampler, Task
from dblocks_jax.tasks.batches import BatchChecker
from dblocks_jax.training import metrics as metrics_lib
from dblocks_jax.training import workdir_lock
from dblocks_jax.training.streams import Streams, stream_seed
from dblocks_jax.training.topology import JOB_FIELDS, check_topology

SCHEDULE_STEPS = ("global", "own")
# Where offload keeps the blocks not being trained, in order of preference
# (pinned memory is what accelerators copy from asynchronously).
HOST_MEMORY_KINDS = ("pinned_host", "unpinned_host")


class Trainer:
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
      memory (see "Offload" in the module docstring).
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
    # ----- Arguments ------------------------------------------------------
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
    if schedule_step not in SCHEDULE_STEPS:
      raise ValueError(
        f"schedule_step={schedule_step!r} is unknown; choose one of"
        f" {SCHEDULE_STEPS}."
      )
    for name, value in (
      ("accumulation_steps", accumulation_steps),
      ("log_every", log_every),
      ("checkpoint_every", checkpoint_every),
      ("keep_checkpoints", keep_checkpoints),
    ):
      if int(value) < 1:
        raise ValueError(f"{name}={value} must be at least 1.")
    self._plan = plan
    self.task = task
    self.workdir = None if workdir is None else os.path.abspath(workdir)
    self.seed = int(seed)
    self.clip_norm = float(clip_norm)
    self.accumulation_steps = int(accumulation_steps)
    self.schedule_step = schedule_step
    self.learning_rate = learning_rate
    self.total_steps = int(total_steps)
    self.log_every = int(log_every)
    self.checkpoint_every = int(checkpoint_every)
    self.keep_checkpoints = int(keep_checkpoints)

    # ----- Layout and mesh --------------------------------------------------
    sharing = "shared" if model.shared and model.blocks else "independent"
    self.layout = layout_lib.Layout.create(
      model.num_blocks,
      train_blocks=train_blocks,
      num_groups=block_groups,
      data_shards=data_shards,
      layers_per_block=plan.layers_per_block if plan else (),
      sharing=sharing if model.blocks else "shared",
    )
    self.mesh = layout_lib.make_mesh(self.layout)
    self.schedules = [
      BlockSchedule(
        schedule,
        self.layout.group_blocks(g),
        seed=self.seed + 7919 * g,
      )
      for g in range(self.layout.num_groups)
      if self.layout.blocks
    ]
    # The per-block rule: blocks split over groups or jobs.
    self.per_block = self.layout.stacked or self.layout.partial
    self._topology = dict(topology or {})
    self._topology.update(self._layout_topology(sharing))

    # ----- Optimizers -------------------------------------------------------
    self.graphdefs, shared, blocks, fixed = parts_lib.split(model)
    self.optimizers = optim.GroupOptimizers.create(
      optimizer,
      shared_optimizer,
      num_blocks=model.num_blocks,
      held_blocks=self.layout.blocks if model.num_blocks else (),
      has_shared=bool(jax.tree.leaves(shared["params"])),
    )
    if self.optimizers and self.layout.stacked:
      distinct = {id(self.optimizers.blocks[b]) for b in self.layout.blocks}
      if len(distinct) > 1:
        raise ValueError(
          f"block_groups={self.layout.num_groups} trains its groups' blocks"
          " in one compiled step with one transformation; per-block"
          " optimizers need block_groups=1 or one job per block"
          " (train_blocks=(b,))."
        )

    # ----- Offload ----------------------------------------------------------
    self._host_kind = self._host_memory_kind() if offload else None
    # With G > 1 (one block per group) every held block trains at each step.
    self.offload = bool(offload) and not self.layout.stacked
    if offload and not self.offload:
      logging.info("offload: one block per group, nothing to move.")
    self._resident: int | None = None  # The block in device memory.

    # ----- State ------------------------------------------------------------
    held = set(self.layout.blocks)

    def group(arrays, tx):
      if tx is None:  # Inference only: no optimizer state.
        return dict(arrays)
      return dict(arrays, opt_state=tx.init(arrays["params"]))

    def block_group(arrays, b):
      tx = self.optimizers.blocks[b] if self.optimizers else None
      # Offload: each block's state leaves the device as soon as it is
      # made, so the device never holds every block's optimizer state.
      made = group(arrays, tx)
      return jax.device_get(made) if self.offload else made

    shared_tx = self.optimizers.shared if self.optimizers else None
    self._state = {
      "step": np.zeros((), np.int32),
      "updates": np.zeros((max(model.num_blocks, 1),), np.int32),
      "shared": (
        group(shared, shared_tx) if jax.tree.leaves(shared["params"]) else {}
      ),
      "blocks": [
        block_group(b, i) if i in held else {} for i, b in enumerate(blocks)
      ],
      "fixed": fixed,
    }
    self._place(self._state)

    # ----- Batches, compiled steps, logs ------------------------------------
    self._batches = BatchChecker(
      self._task_fields() if hasattr(task, "batch_fields") else None,
      type(task).__name__,
      batch_spec,
    )
    self._lock = None
    if self.trains and self.workdir is not None and jax.process_index() == 0:
      self._lock = workdir_lock.acquire(self.workdir)  # One writer.
    self._step_fns = {}
    self._compiled = {}
    # An inference-only trainer writes nothing into its workdir.
    self._writer = metrics_lib.MetricWriter(
      self.workdir if self.trains else None, tensorboard=tensorboard
    )
    self._window: list[tuple[int, int, dict]] = []
    self._progress = None
    self._report = False  # Progress lines on stderr (during `fit`).
    self._checkpointer = None
    self._streams: Streams | None = None
    self._blocks_ahead = [np.zeros(0, np.int64) for _ in self.schedules]

  # ----- Layout ---------------------------------------------------------------

  @property
  def plan(self) -> BlockPlan | None:
    return self._plan

  @property
  def blockwise(self) -> bool:
    return self._plan is not None

  @property
  def trains(self) -> bool:
    """Whether this trainer has an optimizer (False: inference only)."""
    return self.optimizers is not None

  def _require_optimizer(self, action: str) -> None:
    if not self.trains:
      raise ValueError(
        f"this Trainer was built with optimizer=None (inference only): it"
        f" restores, predicts, evaluates and samples, but cannot {action};"
        " pass an optax transformation to train."
      )

  @property
  def inference_key(self) -> jax.Array:
    """The default key of `predict` and `evaluate`: key(seed + 1), apart
    from the training steps' keys fold_in(key(seed), step)."""
    return jax.random.key(self.seed + 1)

  def _task_fields(self):
    """`example -> task.batch_fields(parts, example)`, the parts those of
    the first block this run holds (e.g. its target table)."""

    def fields(example):
      block = self.layout.blocks[0] if self.layout.blocks else 0
      arrays = inference.inference_arrays(self.state)
      parts = inference.parts_for_block_fn(self.graphdefs, arrays)(block)
      return self.task.batch_fields(parts, example)

    return fields

  @property
  def batch_spec(self) -> dict | None:
    """The run's batch shapes, {name: [shape after the batch axis,
    dtype]} (given, or the first training batch's; None: none seen yet)."""
    return self._batches.describe()

  def _layout_topology(self, sharing: str) -> dict:
    topology = {}
    if self._plan is not None:
      topology.update(self._plan.topology())
      topology["sharing"] = sharing
    if self.layout.partial:
      topology["trained_blocks"] = list(self.layout.blocks)
    if self.layout.num_groups > 1:
      topology["block_groups"] = self.layout.num_groups
    return topology

  @property
  def topology(self) -> dict:
    """What a resumed run must agree on (recorded in every checkpoint)."""
    return dict(self._topology)

  def _place(self, state) -> None:
    """Puts the state on the mesh: shared, fixed and (G = 1) blocks
    replicated; G > 1 blocks stacked along `block`. With offload, every
    block but the resident one goes to host memory."""
    mesh = self.mesh
    state["shared"] = layout_lib.put_replicated(state["shared"], mesh)
    state["fixed"] = layout_lib.put_replicated(state["fixed"], mesh)
    if self.layout.stacked:
      held = {b: state["blocks"][b] for b in self.layout.blocks}
      self._stacked = layout_lib.stack(held, self.layout, mesh)
      state["blocks"] = [{} for _ in state["blocks"]]
    else:
      state["blocks"] = [
        layout_lib.put_replicated(b, mesh, self.memory_kind(i)) if b else {}
        for i, b in enumerate(state["blocks"])
      ]

  # ----- Offload --------------------------------------------------------------

  def _host_memory_kind(self) -> str:
    """The host memory kind offload uses, or a one-line error saying why
    offload cannot apply to this run."""
    layout = self.layout
    if self._plan is None:
      raise ValueError(
        "offload=True keeps the blocks not being trained in host memory;"
        " an end-to-end network has no blocks. Set offload=False."
      )
    if layout.stacked and layout.blocks_per_group > 1:
      raise ValueError(
        f"offload=True cannot apply to block_groups={layout.num_groups}:"
        f" each group's {layout.blocks_per_group} blocks are stacked in one"
        " array that its step reads whole; use one block per group"
        f" (block_groups={len(layout.blocks)}), one job per block"
        " (train_blocks=(b,)), or offload=False."
      )
    device = self.mesh.devices.flat[0]
    kind = host_memory_kind(device)
    if kind is None:
      kinds = [m.kind for m in device.addressable_memories()]
      raise ValueError(
        f"offload=True needs host memory ({' or '.join(HOST_MEMORY_KINDS)}),"
        f" but the {device.platform} device exposes only {kinds}; set"
        " offload=False."
      )
    return kind

  def memory_kind(self, block: int) -> str | None:
    """The memory kind where a held block's state is placed: the host kind
    (offload, every block but the resident one) or None (device memory)."""
    if not self.offload or block == self._resident:
      return None
    return self._host_kind

  def _activate(self, block: int) -> None:
    """Offload: moves the resident block back to host memory and `block`
    into device memory (nothing when `block` is already resident)."""
    if block == self._resident:
      return
    blocks, mesh = self._state["blocks"], self.mesh
    previous, self._resident = self._resident, block
    if previous is not None:
      # Out first, then in: the old block's device buffers are released
      # (freed once copied) before the new block's are requested.
      host = layout_lib.replicated(mesh, self._host_kind)
      blocks[previous] = jax.device_put(blocks[previous], host)
    blocks[block] = jax.device_put(blocks[block], layout_lib.replicated(mesh))

  @property
  def writer(self) -> metrics_lib.MetricWriter:
    """The run's metrics writer (`metrics.jsonl`, JSON reports)."""
    return self._writer

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

  @property
  def step_count(self) -> int:
    """Block updates done (the global step)."""
    return int(self._state["step"])

  @property
  def state(self) -> dict:
    """The training state, every block as its own group: {"step",
    "updates" [B], "shared", "blocks": [{"params", "opt_state", "rest"} or
    {} (not held)], "fixed"}.

    With offload, the blocks not being trained are in host memory (their
    arrays' `sharding.memory_kind`; `memory_kind(b)` says where each goes).
    With G > 1 groups, each block is an array on its own group's devices;
    in a multi-process run (where a group's arrays are not global arrays
    that every process can save) the blocks are gathered to host memory.
    """
    state = dict(self._state)
    if self.layout.stacked:
      blocks = list(state["blocks"])
      if jax.process_count() == 1:
        held = layout_lib.unstack(self._stacked, self.mesh, self.layout)
      else:
        held = layout_lib.unstack_to_host(_fetch(self._stacked), self.layout)
      for b, group in held.items():
        blocks[b] = group
      state["blocks"] = blocks
    return state

  def _load(self, state) -> None:
    self._state = {
      "step": np.asarray(state["step"], np.int32),
      "updates": np.asarray(state["updates"], np.int32),
      "shared": state["shared"],
      "blocks": list(state["blocks"]),
      "fixed": state["fixed"],
    }
    self._resident = None
    self._place(self._state)
    self._blocks_ahead = [np.zeros(0, np.int64) for _ in self.schedules]

  # ----- Data streams ---------------------------------------------------------

  def stream_specs(self, batch_size: int) -> dict:
    """The data streams this process feeds, for a global batch size.

    Returns:
      {stream: (seed, local batch size, (shard index, shard count))}, where
      stream is None (the one stream of the sequential rule) or a block
      (per-block rule); the shard says which part of the data this process
      reads among the processes that feed the same group.
    """
    rows = layout_lib.local_rows(self.mesh, self.layout, batch_size)
    specs = {}
    for group, (lo, hi) in rows.items():
      devices = self.mesh.devices[group].flat
      processes = sorted({d.process_index for d in devices})
      shard = (processes.index(jax.process_index()), len(processes))
      if not self.per_block:
        specs[None] = (self.seed, hi - lo, shard)
        continue
      for block in self.layout.group_blocks(group):
        specs[block] = (stream_seed(self.seed, block), hi - lo, shard)
    return specs

  # ----- Steps ----------------------------------------------------------------

  def _loss_fn(self, block: int):
    if self._plan is None:
      return steps.end_to_end_loss(self.task, self.graphdefs)
    return steps.block_loss(
      self.task,
      self.graphdefs,
      self.graphdefs.blocks[block],
      self._plan.noise,
      self._plan.train_ranges,
    )

  def _step_fn(self, block: int):
    """One compiled step per distinct block structure and optimizer."""
    self._require_optimizer("train")
    tx = self.optimizers.for_groups(block if self._plan else None)
    key = (
      self.graphdefs.block_key(block) if self._plan else None,
      id(tx["block"]),
    )
    if key not in self._step_fns:
      if self.layout.stacked:
        fn = steps.build_mesh_step(
          self._loss_fn(block),
          tx,
          self.mesh,
          clip_norm=self.clip_norm,
          accumulation_steps=self.accumulation_steps,
          learning_rate_fn=self.learning_rate,
          has_shared=bool(self._state["shared"]),
        )
      else:
        fn = steps.build_train_step(
          self._loss_fn(block),
          tx,
          clip_norm=self.clip_norm,
          accumulation_steps=self.accumulation_steps,
          learning_rate_fn=self.learning_rate,
          shardings=(
            layout_lib.replicated(self.mesh),
            layout_lib.batch_sharding(self.mesh, False),
          ),
        )
      self._step_fns[key] = fn
    return self._step_fns[key]

  def _next_blocks(self) -> list[int]:
    """The block each group trains at this step."""
    if not self.schedules:
      return [0]
    position = self.step_count // self.layout.num_groups
    out = []
    for g, sched in enumerate(self.schedules):
      if not len(self._blocks_ahead[g]):
        self._blocks_ahead[g] = sched(position, 1000)
      out.append(int(self._blocks_ahead[g][0]))
      self._blocks_ahead[g] = self._blocks_ahead[g][1:]
    return out

  def _rule(self, block: int):
    """(key, schedule step) of the next update of `block`."""
    train_key = jax.random.key(self.seed)
    if not self.per_block:
      s = self.step_count
      return jax.random.fold_in(train_key, s), s
    n = int(self._state["updates"][block])
    key = jax.random.fold_in(jax.random.fold_in(train_key, block), n)
    return key, n * self.layout.num_blocks

  def _schedule_step(self, s):
    return None if self.schedule_step == "own" else s

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
    self._check_training_batch(batch)
    blocks_now = self._next_blocks()
    if self.layout.stacked:
      metrics = self._mesh_step(blocks_now, batch)
    else:
      metrics = self._group_step(blocks_now[0], batch)
    for b in blocks_now:
      if self._plan is not None:
        self._state["updates"][b] += 1
    self._state["step"] = np.asarray(
      self.step_count + self.layout.num_groups, np.int32
    )
    done = self.step_count
    self._window.append((done, blocks_now, metrics))
    if self._crossed(done, self.log_every) or done == self.total_steps:
      self.flush()
    if self.workdir and self._crossed(done, self.checkpoint_every):
      self.save()
    return metrics

  def _check_training_batch(self, batch) -> None:
    if not self.per_block:
      self._batches.check(batch, "train")
      return
    if not isinstance(batch, Mapping):
      raise TypeError(
        "with blocks split over groups or jobs, step() takes {block: batch}"
        f" for the blocks trained now (next_blocks()); got"
        f" {type(batch).__name__}."
      )
    for b in self.next_blocks():
      if b in batch:
        self._batches.check(batch[b], "train")

  def _crossed(self, done: int, every: int) -> bool:
    g = self.layout.num_groups
    return every > 0 and done // every > (done - g) // every

  def _group_step(self, block: int, batch) -> dict:
    if self.per_block:
      batch = batch[block]
    key, s = self._rule(block)
    state = self._state
    if self.offload:
      self._activate(block)
    held = state["blocks"][block] if self._plan else {}
    new_block, new_shared, metrics = self._step_fn(block)(
      held,
      state["shared"],
      state["fixed"],
      self._global_batch({0: batch}),
      key,
      block,
      self._schedule_step(s),
    )
    if self._plan is not None:
      state["blocks"][block] = new_block
    if state["shared"]:
      state["shared"] = new_shared
    return metrics

  def _mesh_step(self, blocks_now: list[int], batches) -> dict:
    local = {}
    for g in range(self.layout.num_groups):
      if blocks_now[g] in batches:
        local[g] = batches[blocks_now[g]]
    keys, schedule_steps = zip(
      *(self._rule(b) for b in blocks_now), strict=True
    )
    slots = [self.layout.slot(b)[1] for b in blocks_now]
    self._stacked, self._state["shared"], metrics = self._step_fn(
      blocks_now[0]
    )(
      self._stacked,
      self._state["shared"],
      self._state["fixed"],
      self._global_batch(local),
      jnp.stack(keys),
      jnp.asarray(blocks_now, jnp.int32),
      jnp.asarray(slots, jnp.int32),
      None
      if self.schedule_step == "own"
      else jnp.asarray(schedule_steps, jnp.int32),
    )
    return metrics

  def _global_batch(self, local: dict):
    """{group: this process's rows of its batch} -> one global batch."""
    group, batch = next(iter(local.items()))
    devices = self.mesh.devices[group].flat
    feeding = len({d.process_index for d in devices})
    size = len(jax.tree.leaves(batch)[0]) * feeding
    data_shards = self.layout.data_shards
    if size % data_shards:
      raise ValueError(
        f"the batch of {size} examples does not split over the"
        f" {data_shards} devices of the data axis; use a multiple of"
        f" {data_shards}."
      )
    rows = layout_lib.local_rows(self.mesh, self.layout, size)
    return layout_lib.global_batch(local, rows, self.mesh, self.layout, size)

  def lower_step(self, batch_spec: Mapping, block: int = 0):
    """The step of `block`'s structure lowered on abstract inputs, for
    `.compile().memory_analysis()` (nothing runs).

    Args:
      batch_spec: {name: jax.ShapeDtypeStruct} of one global batch (per
        group when G > 1).
      block: a block of the structure to lower.
    """
    self._require_optimizer("lower a training step")
    replicated = layout_lib.replicated(self.mesh)

    def shaped(tree, sharding):
      return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding),
        tree,
      )

    state = self._state
    key = jax.random.key(0)
    if not self.layout.stacked:
      batch_sharding = layout_lib.batch_sharding(self.mesh, False)
      held = state["blocks"][block] if self._plan else {}
      return self._step_fn(block).lower(
        shaped(held, replicated),
        shaped(state["shared"], replicated),
        shaped(state["fixed"], replicated),
        shaped(batch_spec, batch_sharding),
        key,
        block,
        None if self.schedule_step == "own" else 0,
      )
    g = self.layout.num_groups
    by_block = layout_lib.by_block(self.mesh)
    batch_sharding = layout_lib.batch_sharding(self.mesh, True)
    batch = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(
        (g, *x.shape), x.dtype, sharding=batch_sharding
      ),
      dict(batch_spec),
    )
    ints = jax.ShapeDtypeStruct((g,), jnp.int32, sharding=by_block)
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), g))
    return self._step_fn(block).lower(
      shaped(self._stacked, by_block),
      shaped(state["shared"], replicated),
      shaped(state["fixed"], replicated),
      batch,
      keys,
      ints,
      ints,
      None if self.schedule_step == "own" else ints,
    )

  # ----- Logs and NaN checks --------------------------------------------------

  def flush(self) -> dict:
    """Fetches the metric window, stops on NaN, writes one line.

    Raises:
      NonFiniteLossError: a loss in the window is NaN or Inf (the newest
        checkpoint on disk is from before it).
    """
    fetched = []
    for step, blocks_now, values in self._window:
      values = _fetch(values)
      for g, block in enumerate(blocks_now):
        row = {
          k: float(np.asarray(v).reshape(-1)[g if np.size(v) > 1 else 0])
          for k, v in values.items()
        }
        fetched.append((step, block, row))
    self._window = []
    for step, block, row in fetched:
      bad_batch = bool(row.pop("nonfinite_batch", 0.0))
      if not np.isfinite(row["loss"]):
        self._writer.flush()
        raise NonFiniteLossError(
          self._non_finite_message(step, block, bad_batch)
        )
    if not fetched:
      return {}
    scalars = _summarise(fetched, self._plan is not None)
    done = self.step_count
    if self._progress is None:
      self._progress = metrics_lib.Progress(
        max(self.total_steps, done), min(done, max(self.total_steps, done))
      )
    scalars.update(self._progress.update(done))
    self._writer.write_scalars(done, scalars)
    line = f"{self._progress.describe(done)} loss {scalars['loss']:.4f}"
    logging.info("%s", line)
    if self._report:
      print(line, file=sys.stderr, flush=True)
    return scalars

  def _non_finite_message(self, step: int, block: int, bad_batch: bool) -> str:
    where = f" (block {block})" if self._plan else ""
    latest = self._latest_checkpoint()
    if self.workdir is None:
      kept = "nothing was saved (no workdir)"
    elif latest is None:
      kept = "no checkpoint was written yet"
    else:
      kept = f"the last checkpoint (step {latest}) is intact"
    if bad_batch:
      cause = (
        "The step's batch held NaN or Inf in a floating field: fix the data"
        " (the model and the learning rate are not the cause)"
      )
    else:
      cause = (
        "The batch was finite: lower the learning rate or clamp the loss"
        " weight (the task's max_weight; diffusion.max_weight in a config)"
      )
    return f"non-finite loss at step {step}{where}; {kept}. {cause}."

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
    if self.workdir and self._latest_checkpoint() is not None:
      self.restore(data=self._streams)
    start = self.step_count
    end = self._end_step()  # A per-block job ends before total_steps.
    self._progress = metrics_lib.Progress(end, min(start, end))
    self._report = not quiet and jax.process_index() == 0
    if self._report and start < end:
      resumed = f"resumed at step {start}, " if start else ""
      print(
        f"Training to step {end} ({resumed}progress every"
        f" {self.log_every} steps; the first step compiles).",
        file=sys.stderr,
        flush=True,
      )
    num_groups = self.layout.num_groups
    first = True
    try:
      with _StopSignals() as stop:
        while self.step_count < end:
          blocks_now = self._peek_blocks()
          batch = self._next_batch(blocks_now)
          self.step(batch)
          if first:
            logging.info("Compiled and ran the first step.")
            # The rate is measured from here: compiling is not a step.
            self._progress.update(self.step_count)
            first = False
          done = self.step_count
          # Stop before an evaluation: a preempted run's time is short.
          if self._stop_agreed(stop.signal_name) and done < end:
            self._stop(stop.signal_name)
          if (
            evaluate is not None
            and eval_every
            and done < end
            and done // eval_every > (done - num_groups) // eval_every
          ):
            logging.info("Evaluating at step %d.", done)
            with self._progress.paused():
              result = evaluate(self)
            self._writer.write_scalars(done, metrics_lib.numeric(result))
            logging.info("Eval at step %d: %s", done, result)
            if self._report:
              numbers = metrics_lib.numeric(result)
              shown = " ".join(f"{k}={v:.4g}" for k, v in numbers.items())
              print(f"eval at step {done}: {shown}", file=sys.stderr)
        self.flush()
        if self.workdir:
          self.save()
    finally:
      self._report = False
      # An error or NaN must not leave the newest save half written.
      if self._checkpointer is not None:
        self._checkpointer.wait_until_finished()
      self._writer.flush()
    return self

  def _stop_agreed(self, signal_name: str | None) -> bool:
    """Whether every process has been asked to stop (multi-process runs
    decide at `log_every` boundaries, where they all meet)."""
    if jax.process_count() == 1:
      return signal_name is not None
    if not self._crossed(self.step_count, self.log_every):
      return False
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(
      np.asarray(signal_name is not None)
    )
    return bool(np.any(flags))

  def _stop(self, signal_name: str | None) -> None:
    """Checkpoints, logs one line and raises `Preempted`."""
    signal_name = signal_name or "a stop signal on another process"
    step = self.step_count
    where = "no workdir: nothing saved"
    if self.workdir:
      self.save()
      self._checkpointer.wait_until_finished()
      where = f"checkpoint in {self.workdir}; run the same command to resume"
    message = f"{signal_name} received: stopped at step {step} ({where})."
    logging.warning(message)
    raise Preempted(message, signal_name, step)

  def _end_step(self) -> int:
    """The last global step: total_steps, or (per-block rule) the steps
    that give every trained block total_steps // B updates."""
    if not self.per_block:
      return self.total_steps
    per_block = self.total_steps // self.layout.num_blocks
    return per_block * len(self.layout.blocks)

  def _peek_blocks(self) -> list[int]:
    """The blocks the next step trains (without consuming them)."""
    if not self.schedules:
      return [0]
    blocks = self._next_blocks()
    for g, b in enumerate(blocks):
      self._blocks_ahead[g] = np.concatenate([[b], self._blocks_ahead[g]])
    return blocks

  def next_blocks(self) -> list[int]:
    """The block each device group trains at the next `step`."""
    return self._peek_blocks()

  def _next_batch(self, blocks_now):
    if not self.per_block:
      return self._streams.next(None)
    # This process feeds the blocks of the groups whose devices it holds.
    held = self._streams.iterators
    return {b: self._streams.next(b) for b in blocks_now if b in held}

  # ----- Inference ------------------------------------------------------------

  def arrays(self) -> dict:
    """What inference reads: {"shared", "blocks", "fixed"} of {"params",
    "rest"} (blocks of a G > 1 run are gathered to this process; with
    offload, every block is copied to device memory)."""
    arrays = inference.inference_arrays(self.state)
    if self.layout.stacked:
      arrays = jax.device_get(arrays)
    elif self.offload:  # Device copies of the host blocks' parameters.
      arrays = jax.device_put(arrays, layout_lib.replicated(self.mesh))
    return arrays

  def sampler(
    self, num_steps: int = 0, grid: str = "", method: str = "euler"
  ) -> Sampler | None:
    """The routed sampler of the plan (None without a plan)."""
    if self._plan is None:
      return None
    return Sampler.of(self._plan, num_steps, grid, method)

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
    if sampler is None:
      sampler = self.sampler()
    fn = self.predict_fn(sampler)
    key = self.inference_key if key is None else key
    return fn(self.arrays(), batch, jax.random.fold_in(key, 0))

  def predict_fn(self, sampler: Sampler | None):
    """The jitted `predict(arrays, batch, key)` of a sampler (cached)."""
    return self.compiled(
      ("predict", sampler.key if sampler else None),
      lambda: inference.make_predict(self.task, self.graphdefs, sampler),
    )

  def compiled(self, key: tuple, build: Callable[[], Callable]) -> Callable:
    """`build()` once per `key` for this trainer, then the same function.

    For the jitted functions of evaluation (a sampler's predict, a
    family's generator), so that evaluating again during training reuses
    their compilation. The key must name everything `build` closes over
    besides the trainer's task and graph definitions.
    """
    if key not in self._compiled:
      self._compiled[key] = build()
    return self._compiled[key]

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
    if sampler is None:
      sampler = self.sampler()
    fn = self.predict_fn(sampler)
    arrays = self.arrays()
    key = self.inference_key if key is None else key

    def predict(batch, k):
      self._batches.check(batch, "evaluate")
      return fn(arrays, batch, k)

    return self.task.evaluate(predict, batches, key)

  # ----- Checkpoints ----------------------------------------------------------

  def _checkpoints(self):
    if self.workdir is None:
      raise ValueError("this Trainer has no workdir; pass workdir=... to save.")
    if self._checkpointer is None:
      from dblocks_jax.training import checkpoint  # Orbax, only when saving.

      self._checkpointer = checkpoint.Checkpointer(
        os.path.join(self.workdir, "checkpoints"),
        max_to_keep=self.keep_checkpoints,
        save_interval_steps=1,
      )
    return self._checkpointer

  def _latest_checkpoint(self) -> int | None:
    if self.workdir is None:
      return None
    if self._checkpointer is None and not os.path.isdir(
      os.path.join(self.workdir, "checkpoints")
    ):
      return None
    return self._checkpoints().latest_step()

  def save(self) -> bool:
    """Checkpoints the state (and the data streams' positions), after
    checking the pending metrics for NaN. Returns whether a save started
    (False: this step is saved already)."""
    self._require_optimizer(
      "save (its checkpoints would hold no optimizer state)"
    )
    self.flush()
    ckpt = self._checkpoints()
    data = None
    if self._streams is not None and self._streams.checkpointable:
      data = self._streams
    metadata = {"topology": self.topology}
    if self._batches.describe() is not None:
      metadata["batch_spec"] = self._batches.describe()
    progress = self._progress
    with progress.paused() if progress else contextlib.nullcontext():
      return ckpt.save(
        self.step_count,
        self.state,
        data_iterator=data,
        metadata=metadata,
        force=True,
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
    if isinstance(data, Mapping):
      data = Streams(data)
    elif data is not None and not isinstance(data, Streams):
      data = Streams({None: data})
    if data is not None and not data.checkpointable:
      data = None
    self._restore_from(self._checkpoints(), self.workdir, step, data)
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
    from dblocks_jax.errors import ConfigError
    from dblocks_jax.training import checkpoint

    workdir = os.path.abspath(workdir)
    directory = os.path.join(workdir, "checkpoints")
    with checkpoint.Checkpointer(directory, read_only=True) as ckpt:
      if ckpt.latest_step() is None:
        raise ConfigError(
          f"no checkpoint in {directory}; train first (--mode=train) or"
          " point --workdir at a trained run."
        )
      self._restore_from(ckpt, workdir, step, None, layout_free=True)
    return self.step_count

  def _restore_from(self, ckpt, workdir, step, data, layout_free=False):
    ours = self.topology
    if layout_free:
      # How the run was laid out on devices does not change the model.
      ours = {k: v for k, v in ours.items() if k not in JOB_FIELDS}

    def check(metadata):
      recorded = (metadata or {}).get("topology")
      if layout_free and recorded is not None:
        recorded = {k: v for k, v in recorded.items() if k not in JOB_FIELDS}
      check_topology(workdir, ours, recorded)

    state, metadata = ckpt.restore(
      self._restore_target(),
      step=step,
      data_iterator=data,
      check_metadata=check,
      partial=not self.trains,  # The parameters, not the optimizer states.
    )
    self._load(state)
    self._batches.load(metadata.get("batch_spec"))

  def _restore_target(self):
    """The state's structure, with each array where it will be restored
    (an inference-only trainer's holds no optimizer states)."""
    state = self.state
    if self.layout.stacked:
      state = jax.device_get(state)  # Stacked again by _load.
    return state

  def close(self) -> None:
    """Waits for checkpoint writes; closes the metrics file; gives back the
    workdir's lock."""
    try:
      if self._checkpointer is not None:
        self._checkpointer.close()
      self._writer.close()
    finally:
      if self._lock is not None:
        workdir_lock.release(self._lock)
        self._lock = None


def host_memory_kind(device) -> str | None:
  """The memory kind offload keeps blocks in on `device`: the first of
  `HOST_MEMORY_KINDS` it exposes (None: none). XLA:CPU exposes `device`,
  `pinned_host` and `unpinned_host`, all the same RAM."""
  kinds = {m.kind for m in device.addressable_memories()}
  return next((k for k in HOST_MEMORY_KINDS if k in kinds), None)


class _StopSignals:
  """Within `with`, SIGTERM and SIGINT are recorded (`signal_name`) instead
  of stopping the process; a second SIGINT raises KeyboardInterrupt. Only
  the main thread can install handlers; elsewhere nothing changes."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal_name: str | None = None
    self._previous = {}

  def _handle(self, signum, frame):
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name

  def __enter__(self) -> "_StopSignals":
    if threading.current_thread() is threading.main_thread():
      for signum in self.SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


def _fetch(tree):
  """Host copies of step metrics, whichever processes' devices hold them
  (every process gets all groups' values, so all stop alike on a NaN)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils

  return multihost_utils.process_allgather(tree, tiled=True)


def _summarise(window, blockwise: bool) -> dict:
  """Means over logged steps, overall and per block."""
  scalars = collections.defaultdict(list)
  for _, block, m in window:
    for name, value in m.items():
      scalars[name].append(value)
      if blockwise and name in ("loss", "ce", "mse"):
        scalars[f"{name}/block_{block}"].append(value)
  return {name: float(np.mean(v)) for name, v in scalars.items()}
