"""A run's checkpoints in its workdir: where they go, the newest intact one,
saving with the data streams' positions, restoring under a topology check.

A checkpoint (Orbax, `training.checkpoint`) holds the parameters, every
optimizer state, the step and the data streams' positions, with metadata:
the run's topology (a resumed run must agree on it) and its batch shapes.
A damaged newest checkpoint is skipped and moved to `checkpoints.damaged/`.
"""

import os
from collections.abc import Callable

from dblocks_jax.errors import ConfigError
from dblocks_jax.training.topology import JOB_FIELDS, check_topology


def _checkpoint_lib():
  from dblocks_jax.training import checkpoint  # Orbax, only when needed.

  return checkpoint


def _topology_check(workdir: str, ours: dict, layout_free: bool) -> Callable:
  """metadata -> None, raising TopologyError when the recorded topology
  differs from `ours` (without the job's layout fields: `layout_free`)."""
  if layout_free:
    # How the run was laid out on devices does not change the model.
    ours = {k: v for k, v in ours.items() if k not in JOB_FIELDS}

  def check(metadata):
    recorded = (metadata or {}).get("topology")
    if layout_free and recorded is not None:
      recorded = {k: v for k, v in recorded.items() if k not in JOB_FIELDS}
    check_topology(workdir, ours, recorded)

  return check


class RunCheckpoints:
  """The checkpoints of the run in `workdir` (None: the run saves nothing).

  Args:
    workdir: the run's directory (checkpoints go to `checkpoints/` in it).
    keep: how many of the newest checkpoints are kept.
  """

  def __init__(self, workdir: str | None, keep: int):
    self.workdir = workdir
    self.keep = keep
    self._checkpointer = None

  @property
  def directory(self) -> str:
    return os.path.join(self.workdir, "checkpoints")

  def _open(self):
    if self.workdir is None:
      raise ValueError("this Trainer has no workdir; pass workdir=... to save.")
    if self._checkpointer is None:
      self._checkpointer = _checkpoint_lib().Checkpointer(
        self.directory, max_to_keep=self.keep, save_interval_steps=1
      )
    return self._checkpointer

  def latest(self) -> int | None:
    """The newest checkpoint's step (None: none, or no workdir)."""
    if self.workdir is None:
      return None
    if self._checkpointer is None and not os.path.isdir(self.directory):
      return None
    return self._open().latest_step()

  def kept(self) -> str:
    """What a stopped run keeps, in words (for error messages)."""
    latest = self.latest()
    if self.workdir is None:
      return "nothing was saved (no workdir)"
    if latest is None:
      return "no checkpoint was written yet"
    return f"the last checkpoint (step {latest}) is intact"

  def save(self, step: int, state: dict, *, streams, metadata: dict) -> bool:
    """Starts writing `state` at `step` with the streams' positions
    (`streams`: a checkpointable `Streams`, or None). Returns whether a
    save started (False: `step` is saved already)."""
    return self._open().save(
      step, state, data_iterator=streams, metadata=metadata, force=True
    )

  def restore(
    self, target: dict, topology: dict, *, step=None, streams=None, partial
  ) -> tuple[dict, dict]:
    """(state, metadata) of the newest intact checkpoint (or `step`),
    restoring the streams' positions; `partial`: the parameters and model
    state only, without optimizer states."""
    return self._open().restore(
      target,
      step=step,
      data_iterator=streams,
      check_metadata=_topology_check(self.workdir, topology, False),
      partial=partial,
    )

  def wait(self) -> None:
    """Waits for a save in flight to finish writing."""
    if self._checkpointer is not None:
      self._checkpointer.wait_until_finished()

  def close(self) -> None:
    if self._checkpointer is not None:
      self._checkpointer.close()


def load_checkpoint(
  workdir: str, target: dict, topology: dict, *, step=None, partial: bool
) -> tuple[dict, dict]:
  """(state, metadata) of the newest intact checkpoint (or `step`) of the
  run in `workdir`, read-only; the job's layout fields of the topology
  are not compared (a per-block job's checkpoint loads anywhere).

  Raises:
    ConfigError: `workdir` holds no checkpoint.
    CheckpointError: no checkpoint is intact.
    TopologyError: its topology differs from `topology`.
  """
  workdir = os.path.abspath(workdir)
  directory = os.path.join(workdir, "checkpoints")
  with _checkpoint_lib().Checkpointer(directory, read_only=True) as ckpt:
    if ckpt.latest_step() is None:
      raise ConfigError(
        f"no checkpoint in {directory}; train first (--mode=train) or"
        " point --workdir at a trained run."
      )
    return ckpt.restore(
      target,
      step=step,
      check_metadata=_topology_check(workdir, topology, True),
      partial=partial,
    )
