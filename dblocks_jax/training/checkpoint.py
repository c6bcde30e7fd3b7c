"""Checkpoints of a training run, written with Orbax.

This is the only module of the package that talks to Orbax. A checkpoint is a
directory `<directory>/<step>/` with up to three items:

* `state`: the training state, any pytree of arrays (`nnx.State`, optax
  states, lists, dicts), saved with `StandardSave`;
* `metadata`: a JSON-able dict, e.g. the block topology of the run;
* `data`: the state of a grain iterator, only when one is given to `save`.

Orbax writes every checkpoint to `<step>.orbax-checkpoint-tmp` and renames it
when all items are complete, so a run killed during a save keeps its previous
checkpoints. Saving is asynchronous by default: `save` returns once the arrays
are copied to host memory (the grain item is written before it returns too),
and the files are written in a background thread.

Integrity. Once a checkpoint is complete, the size and CRC-32 of each of its
files go to `<step>/dblocks_digests.json`. Reading checks the newest
checkpoint against them (a truncated, garbled or missing file, or a
directory that was never committed); a damaged checkpoint is skipped with a
warning naming its step, and the newest intact one is read instead. A
writer moves damaged checkpoints and unfinished temporary directories to
`<directory>.damaged/` (so that the resumed run can save those steps again);
nothing is ever deleted but what `max_to_keep` retires. A write that fails
(a full disk) raises `CheckpointError` and leaves the previous checkpoints
intact.
"""

import json
import os
import shutil
import zlib
from typing import Any

import grain.checkpoint as grain_checkpoint
import jax
import orbax.checkpoint as ocp
from absl import logging

from dblocks_jax import errors
from dblocks_jax.errors import CheckpointError

_STATE = "state"
_METADATA = "metadata"
_DATA = "data"
DIGESTS = "dblocks_digests.json"
DAMAGED_SUFFIX = ".damaged"
_UNFINISHED = ".orbax-checkpoint-tmp"
_CHUNK = 1 << 20


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
    self._read_only = read_only
    self._writer = not read_only and jax.process_index() == 0
    self._unsealed: set[int] = set()
    self._saving: int | None = None
    if self._writer:
      self._set_aside_unfinished()
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      create=not read_only,
      # Unfinished saves are moved aside (never deleted) by the writer.
      cleanup_tmp_directories=False,
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
      CheckpointError: this save, or the previous asynchronous one, could
        not be written (e.g. the disk is full).
    """
    step = int(step)
    if not force and not self.should_save(step):
      return False
    self.wait_until_finished()
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
    self._saving = step
    try:
      saved = self._manager.save(
        step, args=ocp.args.Composite(**items), force=True
      )
    except (OSError, ValueError, RuntimeError) as e:
      self._raise_write_error(e)
    if saved:
      self._unsealed.add(step)
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
    check_metadata=None,
    partial: bool = False,
  ) -> tuple[Any, dict[str, Any]]:
    """Restores the state, the metadata and optionally the data position.

    Without `step`, the newest intact checkpoint is read: a damaged one
    (see the module docstring) is skipped with a warning naming its step,
    and a writer moves it to `<directory>.damaged/`.

    Args:
      state_target: a pytree of the same structure as the saved state, with
        `jax.ShapeDtypeStruct` leaves (from `jax.eval_shape`; give them a
        sharding to place the arrays) or concrete arrays. The result has its
        structure, so `nnx.State` and optax states keep their classes.
      step: the step to restore (no fallback); the newest intact when None.
      data_iterator: a fresh grain iterator of the same pipeline; its
        position is set in place to the saved one.
      check_metadata: called with a checkpoint's metadata before its state is
        read (e.g. to refuse another topology); what it raises propagates.
      partial: read only the arrays `state_target` names (a subtree of the
        saved state, e.g. the parameters without the optimizer states);
        the rest of the checkpoint is not read.

    Returns:
      `(state, metadata)`.

    Raises:
      FileNotFoundError: there is no checkpoint (for `step`).
      CheckpointError: every checkpoint (or `step`) is damaged.
      ConfigError: `data_iterator` is given but the checkpoint holds no data
        position.
    """
    self.wait_until_finished()
    candidates = self.all_steps()[::-1] if step is None else [step]
    if step is not None:
      self._existing_step(step)
    if not candidates:
      raise FileNotFoundError(f"No checkpoint in {self._directory}.")
    damaged = {}
    for candidate in candidates:
      problem = self.verify(candidate)
      metadata = None
      if problem is None:
        try:
          metadata = self._read_metadata_item(candidate)
        except Exception as e:  # Damaged JSON raises many kinds.
          problem = f"its metadata cannot be read ({_short(e)})"
      if problem is None:
        if check_metadata is not None:
          check_metadata(metadata)
        try:
          restored = self._restore_step(
            candidate, state_target, data_iterator, partial
          )
        except errors.ConfigError:
          raise
        except Exception as e:  # TensorStore and grain raise many kinds.
          if self._sealed(candidate):
            raise  # Intact files: the target does not fit the checkpoint.
          problem = f"its files cannot be read ({_short(e)})"
      if problem is not None:
        damaged[candidate] = problem
        logging.warning(
          "The checkpoint of step %d in %s is damaged: %s.",
          candidate,
          self._directory,
          problem,
        )
        continue
      if damaged:
        logging.warning(
          "Using the checkpoint of step %d instead of the damaged step(s) %s.",
          candidate,
          sorted(damaged),
        )
        self._set_aside(sorted(damaged))
      logging.info(
        "Restored checkpoint for step %d from %s.", candidate, self.directory
      )
      return restored[_STATE], dict(restored[_METADATA] or {})
    listed = "; ".join(f"step {s}: {p}" for s, p in sorted(damaged.items()))
    raise CheckpointError(
      f"no intact checkpoint in {self._directory} ({listed}). Nothing was"
      " deleted: restore the directory from a backup, or move it aside to"
      " train afresh in the same workdir (or use a new one)."
    )

  def _restore_step(self, step, state_target, data_iterator, partial=False):
    if partial:
      state = ocp.args.PyTreeRestore(
        item=state_target,
        restore_args=ocp.checkpoint_utils.construct_restore_args(state_target),
        partial_restore=True,
      )
    else:
      state = ocp.args.StandardRestore(state_target)
    items = {_STATE: state, _METADATA: ocp.args.JsonRestore()}
    if data_iterator is not None:
      if not os.path.isdir(self._item_path(step, _DATA)):
        raise errors.ConfigError(
          f"The checkpoint for step {step} in {self._directory} holds no "
          "data iterator position; restore without one (the data order "
          "starts afresh) or use a new workdir."
        )
      items[_DATA] = grain_checkpoint.CheckpointRestore(data_iterator)
    return self._manager.restore(step, args=ocp.args.Composite(**items))

  def read_metadata(self, step: int | None = None) -> dict[str, Any] | None:
    """Reads only the metadata item of a checkpoint (no integrity check).

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
    return self._read_metadata_item(step)

  def read_state(self, step: int | None = None) -> Any:
    """Reads a checkpoint's state as saved, without a target (nested dicts
    and lists of arrays), for inspection and comparison; no integrity check
    and no fallback.

    Raises:
      FileNotFoundError: there is no checkpoint (for `step`).
    """
    self.wait_until_finished()
    step = self._existing_step(step)
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self._directory}.")
    restored = self._manager.restore(
      step, args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore()})
    )
    return restored[_STATE]

  def _read_metadata_item(self, step: int) -> dict[str, Any]:
    restored = self._manager.restore(
      step, args=ocp.args.Composite(**{_METADATA: ocp.args.JsonRestore()})
    )
    return dict(restored[_METADATA] or {})

  # ----- Integrity ------------------------------------------------------------

  def verify(self, step: int) -> str | None:
    """What is wrong with the checkpoint of `step`, or None when its files
    match their digests (or, unsealed, when its items are all present)."""
    path = os.path.join(self._directory, str(step))
    missing = [
      item
      for item in (_STATE, _METADATA)
      if not os.path.isdir(os.path.join(path, item))
    ]
    if missing:
      return f"it was never committed (no {' or '.join(missing)} item)"
    digests_path = os.path.join(path, DIGESTS)
    if not os.path.isfile(digests_path):
      return None
    try:
      with open(digests_path) as f:
        expected = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
      return f"its digest file cannot be read ({_short(e)})"
    for name, (size, crc) in sorted(expected.items()):
      file = os.path.join(path, name)
      if not os.path.isfile(file):
        return f"{name} is missing"
      if os.path.getsize(file) != size:
        return f"{name} has {os.path.getsize(file)} bytes, not {size}"
      if _crc32(file) != crc:
        return f"{name} is garbled (its CRC-32 differs)"
    return None

  def _sealed(self, step: int) -> bool:
    path = os.path.join(self._directory, str(step), DIGESTS)
    return os.path.isfile(path)

  def _seal(self) -> None:
    """Writes the digests of the checkpoints this object completed."""
    finished = set(self._manager.all_steps())
    for step in sorted(self._unsealed):
      if step not in finished:
        continue  # Retired by max_to_keep.
      path = os.path.join(self._directory, str(step))
      files = {}
      for root, _, names in os.walk(path):
        for name in names:
          full = os.path.join(root, name)
          rel = os.path.relpath(full, path)
          if rel != DIGESTS:
            files[rel] = (os.path.getsize(full), _crc32(full))
      tmp = os.path.join(path, DIGESTS + ".tmp")
      with open(tmp, "w") as f:
        json.dump({"step": step, "files": files}, f, indent=1)
      os.replace(tmp, os.path.join(path, DIGESTS))
    self._unsealed.clear()

  def _set_aside_unfinished(self) -> None:
    """Moves what interrupted saves left to `<directory>.damaged/`."""
    if not os.path.isdir(self._directory):
      return
    for name in sorted(os.listdir(self._directory)):
      if _UNFINISHED in name:
        logging.warning(
          "The checkpoint of step %s in %s was never finished (the run"
          " stopped while writing it).",
          name.split(".")[0],
          self._directory,
        )
        self._move_aside(name)

  def _set_aside(self, steps) -> None:
    if self._writer:
      for step in steps:
        self._move_aside(str(step))
      self._manager.reload()

  def _move_aside(self, name: str) -> None:
    """Moves `<directory>/<name>` into `<directory>.damaged/` (a rename:
    works on a full disk too)."""
    aside = self._directory + DAMAGED_SUFFIX
    os.makedirs(aside, exist_ok=True)
    target = os.path.join(aside, name)
    n = 1
    while os.path.exists(target):
      target = os.path.join(aside, f"{name}.{n}")
      n += 1
    shutil.move(os.path.join(self._directory, name), target)
    logging.warning(
      "Moved it to %s; nothing is deleted: inspect it, then delete it.",
      target,
    )

  def _raise_write_error(self, e: Exception):
    step = self._saving
    self._saving = None
    intact = [s for s in self._manager.all_steps() if s != step]
    kept = (
      f"the checkpoint of step {max(intact)} is intact"
      if intact
      else "no earlier checkpoint exists"
    )
    raise CheckpointError(
      f"writing the checkpoint of step {step} in {self._directory} failed"
      f" ({_short(e)}); {kept}. Free disk space (or fix the directory's"
      " permissions) and run the same command again to resume."
    ) from e

  def wait_until_finished(self) -> None:
    """Blocks until a running asynchronous save is complete on disk, then
    writes its digests.

    Raises:
      CheckpointError: the save could not be written.
    """
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # The background thread's error, whatever it is.
      self._raise_write_error(e)
    self._saving = None
    if self._writer:
      self._seal()

  def close(self) -> None:
    """Waits for running saves and releases Orbax's resources.

    Raises:
      CheckpointError: the last save could not be written.
    """
    if not self._closed:
      self._closed = True
      try:
        self.wait_until_finished()
      finally:
        self._manager.close()

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


def _crc32(path: str) -> int:
  crc = 0
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      crc = zlib.crc32(chunk, crc)
  return crc


def _short(e: Exception) -> str:
  """An exception as one short line."""
  text = " ".join(str(e).split()) or type(e).__name__
  # The OS's reason (e.g. "No space left on device") comes last.
  return text if len(text) <= 240 else f"{text[:80]} ... {text[-150:]}"
