"""A run's data streams, saved and restored together.

The sequential rule reads one stream (id None); the per-block rule one per
block (id b, seeded `stream_seed(seed, b)`), whichever job or mesh trains b.
`Streams` implements the iterator protocol of grain's checkpoint handler
(`get_state` / `set_state`), so every stream's position is in the checkpoint.
"""

import json
from collections.abc import Mapping


def stream_seed(seed: int, block: int) -> int:
  """The seed of block `block`'s data stream (per-block rule)."""
  return seed + 1 + block


class Streams:
  """Data streams by id (None: the one stream; b: block b's), saved and
  restored together (grain's checkpoint protocol: get_state / set_state)."""

  def __init__(self, iterators: Mapping):
    self.iterators = dict(iterators)

  @classmethod
  def checkpointable_of(cls, data) -> "Streams | None":
    """`data` (None, an iterator, {stream: iterator} or Streams) as
    Streams whose positions a checkpoint can hold, or None (nothing to
    save or restore: no data, or iterators without get_state/set_state)."""
    if data is None:
      return None
    if not isinstance(data, Streams):
      data = cls(data if isinstance(data, Mapping) else {None: data})
    return data if data.checkpointable else None

  def next(self, stream) -> dict:
    return next(self.iterators[stream])

  @property
  def checkpointable(self) -> bool:
    return all(
      hasattr(it, "get_state") and hasattr(it, "set_state")
      for it in self.iterators.values()
    )

  def get_state(self) -> bytes:
    states = {
      str(k): _as_text(it.get_state()) for k, it in self.iterators.items()
    }
    return json.dumps(states).encode()

  def set_state(self, state: bytes) -> None:
    for key, value in json.loads(state).items():
      stream = None if key == "None" else int(key)
      self.iterators[stream].set_state(_from_text(value))

  def start_prefetch(self) -> None:
    """Nothing to start: the pipelines read on demand."""


def _as_text(state):
  return state.decode("latin-1") if isinstance(state, bytes) else state


def _from_text(value):
  return value.encode("latin-1") if isinstance(value, str) else value
