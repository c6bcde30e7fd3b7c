"""Checkpoints of a training run, written with Orbax.

This is the only module of the package that talks to Orbax. A checkpoint is a
directory `<directory>/<step>/` with up to three items:

* `state`: the training state, any pytree of arrays (`nnx.State`, optax
  states, lists, dicts), saved with `StandardSave`;
* `metadata`: a JSON-able dict, e.g. the block topology of the run;
* `data`: the state of a grain iterator, only when one is given to `save`.

Orbax writes every checkpoint to `<step>.orbax-checkpoint-tmp` and renames it
when all items are complete, so a run killed during a save keeps its previous
checkpoints; unfinished temporary directories are ignored and removed by the
next save. Saving is asynchronous by default: `save` returns once the arrays
are copied to host memory (the grain item is written before it returns too),
and the files are written in a background thread.
"""

import json
import os
from typing import Any

import grain.checkpoint as grain_checkpoint
import orbax.checkpoint as ocp
from absl import logging

from dblocks_jax import errors

_STATE = "state"
_METADATA = "metadata"
_DATA = "data"


class Checkpointer:
  """Checkpoints of one run in `<workdir>/checkpoints/<step>/`.

  Typical use in a trainer::

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    if ckpt.latest_step() is not None:
      meta = ckpt.read_metadata()  # check the topology before restoring
      state, meta = ckpt.restore(jax.eval_shape(make_state), data_iterator=it)
    ...
    ckpt.save(step, state, data_iterator=it, metadata=meta)
    ...
    ckpt.save(step, state, data_iterator=it, metadata=meta, force=True)
    ckpt.close()  # waits for the last asynchronous save
  """

  def __init__(
    self,
    directory: str | os.PathLike[str],
    *,
    max_to_keep: int = 2,
    save_interval_steps: int = 1000,
    async_save: bool = True,
    read_only: bool = False,
  ):
    """Opens (and creates if needed) a checkpoint directory.

    Args:
      directory: where the step directories live; relative paths are taken
        from the current directory. Created when missing.
      max_to_keep: how many of the newest checkpoints are kept.
      save_interval_steps: `should_save(step)` is true for multiples of it.
      async_save: write the files in a background thread. With False, `save`
        returns only when the checkpoint is complete on disk.
      read_only: for evaluation and assembly: a missing directory is not
        created (it reads as no checkpoint) and unfinished temporary
        directories are left to the run that owns them (Orbax removes them
        in a background thread that a short-lived reader would cut off at
        exit).

    Raises:
      ConfigError: `max_to_keep` or `save_interval_steps` is below 1.
    """
    if max_to_keep < 1:
      raise errors.ConfigError(
        f"max_to_keep must be at least 1, got {max_to_keep}."
      )
    if save_interval_steps < 1:
      raise errors.ConfigError(
        f"save_interval_steps must be at least 1, got {save_interval_steps}."
      )
    self._directory = os.path.abspath(os.path.expanduser(directory))
    self._save_interval_steps = save_interval_steps
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      create=not read_only,
      cleanup_tmp_directories=not read_only,
      enable_async_checkpointing=async_save,
    )
    self._manager = ocp.CheckpointManager(
      self._directory,
      options=options,
      item_names=(_STATE, _METADATA, _DATA),
    )
    self._closed = False

  @property
  def directory(self) -> str:
    """The absolute path of the checkpoint directory."""
    return self._directory

  def all_steps(self) -> list[int]:
    """Steps of all checkpoints, oldest first."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest step, or None when there is no checkpoint.

    While an asynchronous save runs, its step already counts; `restore` and
    `read_metadata` wait for it to finish.
    """
    steps = self.all_steps()
    return steps[-1] if steps else None

  def should_save(self, step: int) -> bool:
    """Whether `step` is a multiple of `save_interval_steps`."""
    return int(step) % self._save_interval_steps == 0

  def save(
    self,
    step: int,
    state: Any,
    *,
    data_iterator: Any = None,
    metadata: dict[str, Any],
    force: bool = False,
  ) -> bool:
    """Saves a checkpoint for `step` if it is due.

    Args:
      step: the training step; the name of the checkpoint directory.
      state: a pytree of arrays.
      data_iterator: a grain `DatasetIterator` (or `DataLoader` iterator)
        whose position is saved with the state.
      metadata: a JSON-able dict stored next to the state.
      force: save even when `step` is not a multiple of the interval (end of
        training, preemption).

    Returns:
      True when a save was started. False when the step is not due, or a
      checkpoint for `step` (or a newer one) already exists.

    Raises:
      TypeError: `metadata` is not JSON-able.
    """
    step = int(step)
    if not force and not self.should_save(step):
      return False
    latest = self.latest_step()
    if step in self._manager.all_steps():
      logging.info("Checkpoint for step %d exists; not saving again.", step)
      return False
    if latest is not None and step < latest:
      logging.warning(
        "Not saving step %d: the directory %s holds a newer step %d.",
        step,
        self._directory,
        latest,
      )
      return False
    try:
      json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as e:
      raise TypeError(f"Checkpoint metadata is not JSON-able: {e}") from e
    items = {
      _STATE: ocp.args.StandardSave(state),
      _METADATA: ocp.args.JsonSave(metadata),
    }
    if data_iterator is not None:
      items[_DATA] = grain_checkpoint.CheckpointSave(data_iterator)
    saved = self._manager.save(
      step, args=ocp.args.Composite(**items), force=True
    )
    if saved:
      logging.info(
        "Saving checkpoint for step %d in %s.", step, self._directory
      )
    return saved

  def restore(
    self,
    state_target: Any,
    *,
    step: int | None = None,
    data_iterator: Any = None,
  ) -> tuple[Any, dict[str, Any]]:
    """Restores the state, the metadata and optionally the data position.

    Args:
      state_target: a pytree of the same structure as the saved state, with
        `jax.ShapeDtypeStruct` leaves (from `jax.eval_shape`; give them a
        sharding to place the arrays) or concrete arrays. The result has its
        structure, so `nnx.State` and optax states keep their classes.
      step: the step to restore; the latest when None.
      data_iterator: a fresh grain iterator of the same pipeline; its
        position is set in place to the saved one.

    Returns:
      `(state, metadata)`.

    Raises:
      FileNotFoundError: there is no checkpoint (for `step`).
      ConfigError: `data_iterator` is given but the checkpoint holds no data
        position.
    """
    self.wait_until_finished()
    step = self._existing_step(step)
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self._directory}.")
    items = {
      _STATE: ocp.args.StandardRestore(state_target),
      _METADATA: ocp.args.JsonRestore(),
    }
    if data_iterator is not None:
      if not os.path.isdir(self._item_path(step, _DATA)):
        raise errors.ConfigError(
          f"The checkpoint for step {step} in {self._directory} holds no "
          "data iterator position; restore without one (the data order "
          "starts afresh) or use a new workdir."
        )
      items[_DATA] = grain_checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    logging.info(
      "Restored checkpoint for step %d from %s.", step, self.directory
    )
    return restored[_STATE], dict(restored[_METADATA] or {})

  def read_metadata(self, step: int | None = None) -> dict[str, Any] | None:
    """Reads only the metadata item of a checkpoint.

    Args:
      step: the step to read; the latest when None.

    Returns:
      The metadata dict, or None when there is no such checkpoint or it has
      no metadata.
    """
    self.wait_until_finished()
    try:
      step = self._existing_step(step)
    except FileNotFoundError:
      return None
    if step is None or not os.path.isdir(self._item_path(step, _METADATA)):
      return None
    restored = self._manager.restore(
      step, args=ocp.args.Composite(**{_METADATA: ocp.args.JsonRestore()})
    )
    return dict(restored[_METADATA] or {})

  def wait_until_finished(self) -> None:
    """Blocks until a running asynchronous save is complete on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for running saves and releases Orbax's resources."""
    if not self._closed:
      self._manager.close()
      self._closed = True

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def _existing_step(self, step: int | None) -> int | None:
    """`step`, or the latest step when None; checks that it exists."""
    if step is None:
      return self.latest_step()
    step = int(step)
    if step not in self._manager.all_steps():
      raise FileNotFoundError(
        f"No checkpoint for step {step} in {self._directory}; "
        f"there are steps {self.all_steps()}."
      )
    return step

  def _item_path(self, step: int, item: str) -> str:
    """The directory of one item of the checkpoint for `step`."""
    return os.path.join(self._directory, str(step), item)
