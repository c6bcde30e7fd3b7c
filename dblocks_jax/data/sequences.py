"""Token sequences for the language models, on grain.

A split (a 1-D array of token ids, e.g. from `data.text`) is cut into
non-overlapping sequences of `seq_len` tokens (the tail is dropped). Training
reads this process's share of them, reshuffled each epoch, in batches; the
iterator's position is checkpointable like the image pipelines'. Evaluation
reads every sequence once, in order, the last batch padded.
"""

from collections.abc import Iterator

import grain
import jax
import numpy as np

from dblocks_jax.data import text
from dblocks_jax.errors import ConfigError, DataError

Batch = dict[str, np.ndarray]


def _check(seq_len: int, batch_size: int) -> None:
  if seq_len < 1:
    raise ConfigError(f"data.seq_len={seq_len} must be at least 1.")
  if batch_size < 1:
    raise ConfigError(f"batch_size={batch_size} must be at least 1.")


def _as_tokens(sequence: np.ndarray) -> dict[str, np.ndarray]:
  return {"tokens": sequence.astype(np.int32)}


def train_iterator(
  ids: np.ndarray,
  *,
  seq_len: int,
  batch_size: int,
  seed: int,
  shard: tuple[int, int] | None = None,
) -> grain.DatasetIterator:
  """An endless, checkpointable iterator of `{"tokens": [batch_size,
  seq_len] int32}`.

  Args:
    ids: [characters] the train split's token ids.
    seq_len: tokens per sequence.
    batch_size: sequences per batch in this process.
    seed: seeds the shuffle (each process's own).
    shard: (index, count): this process reads every count-th sequence from
      the index-th; default (jax.process_index(), jax.process_count()).
  """
  _check(seq_len, batch_size)
  sequences = text.chunk(ids, seq_len, name="train")
  index, count = shard or (jax.process_index(), jax.process_count())
  dataset = grain.MapDataset.source(sequences)
  if count > 1:
    dataset = dataset.slice(slice(index, None, count))
  if len(dataset) < batch_size:
    raise DataError(
      f"the train split holds {len(dataset)} sequences of"
      f" data.seq_len={seq_len} for this process, fewer than"
      f" batch_size={batch_size}; lower either, or use a larger corpus."
    )
  shuffle_seed = int(np.random.SeedSequence((seed, index)).generate_state(1)[0])
  dataset = (
    dataset.shuffle(seed=shuffle_seed)
    .repeat()
    .map(_as_tokens)
    .batch(batch_size, drop_remainder=True)
  )
  return iter(dataset.to_iter_dataset())


def map_in_batches(fn, rows: np.ndarray, batch_size: int) -> np.ndarray:
  """`fn(batch [batch_size, ...], index)` over `rows` in order, the last
  batch padded with copies of its last row (one compiled shape), the
  outputs of the padding dropped and the rest concatenated."""
  out = []
  for index, start in enumerate(range(0, len(rows), batch_size)):
    chunk = rows[start : start + batch_size]
    pad = np.repeat(chunk[-1:], batch_size - len(chunk), axis=0)
    result = fn(np.concatenate([chunk, pad]), index)
    out.append(np.asarray(result)[: len(chunk)])
  return np.concatenate(out)


def eval_batches(
  ids: np.ndarray, *, seq_len: int, batch_size: int, name: str = "test"
) -> Iterator[Batch]:
  """Every sequence of the split once, in order: `{"tokens": [batch_size,
  seq_len] int32, "mask": [batch_size] bool}`; the last batch is padded
  with zeros, `mask` False there."""
  _check(seq_len, batch_size)
  sequences = text.chunk(ids, seq_len, name=name).astype(np.int32)
  for start in range(0, len(sequences), batch_size):
    tokens = sequences[start : start + batch_size]
    mask = np.ones(batch_size, bool)
    if len(tokens) < batch_size:
      mask[len(tokens) :] = False
      pad = np.zeros((batch_size - len(tokens), seq_len), np.int32)
      tokens = np.concatenate([tokens, pad])
    yield {"tokens": tokens, "mask": mask}
