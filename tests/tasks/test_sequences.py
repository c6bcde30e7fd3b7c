"""Token sequences on grain: chunking, shuffling, resuming, evaluation."""

import numpy as np
import pytest

from dblocks_jax.data import sequences
from dblocks_jax.errors import ConfigError, DataError

IDS = np.arange(1000, dtype=np.int32)  # Every token tells its position.


def _firsts(batch):
  return [int(row[0]) for row in batch["tokens"]]


def test_train_batches_are_whole_sequences_each_once_per_epoch():
  it = sequences.train_iterator(IDS, seq_len=10, batch_size=4, seed=0)
  seen = []
  for _ in range(25):  # 100 sequences: one epoch.
    batch = next(it)
    tokens = batch["tokens"]
    assert tokens.shape == (4, 10) and tokens.dtype == np.int32
    # Each row is one of the cut sequences, unshifted.
    starts = tokens[:, 0]
    np.testing.assert_array_equal(tokens, starts[:, None] + np.arange(10))
    seen.extend(_firsts(batch))
  # The shuffle is a permutation: every sequence start appears once.
  assert sorted(seen) == list(range(0, 1000, 10))
  assert seen != list(range(0, 1000, 10))  # Shuffled.


def test_the_same_seed_gives_the_same_order_and_resumes_exactly():
  first = sequences.train_iterator(IDS, seq_len=10, batch_size=4, seed=3)
  for _ in range(7):
    next(first)
  state = first.get_state()
  expected = [next(first)["tokens"] for _ in range(5)]
  resumed = sequences.train_iterator(IDS, seq_len=10, batch_size=4, seed=3)
  resumed.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(resumed)["tokens"], want)
  other = sequences.train_iterator(IDS, seq_len=10, batch_size=4, seed=4)
  assert not np.array_equal(next(other)["tokens"], expected[0])


def test_processes_read_disjoint_shares():
  shares = [
    sequences.train_iterator(
      IDS, seq_len=10, batch_size=10, seed=0, shard=(i, 2)
    )
    for i in range(2)
  ]
  rows = [
    {tuple(r) for _ in range(5) for r in next(it)["tokens"].tolist()}
    for it in shares
  ]
  assert len(rows[0]) == len(rows[1]) == 50 and not rows[0] & rows[1]


def test_eval_reads_every_sequence_once_with_a_padded_mask():
  batches = list(sequences.eval_batches(IDS, seq_len=10, batch_size=32))
  assert [b["mask"].sum() for b in batches] == [32, 32, 32, 4]
  tokens = np.concatenate([b["tokens"][b["mask"]] for b in batches])
  np.testing.assert_array_equal(tokens.reshape(-1), IDS)
  assert not batches[-1]["tokens"][4:].any()


def test_bad_sizes_are_one_line_errors():
  with pytest.raises(DataError, match="data.seq_len=2000"):
    sequences.train_iterator(IDS, seq_len=2000, batch_size=1, seed=0)
  with pytest.raises(DataError, match="batch_size=200"):
    sequences.train_iterator(IDS, seq_len=10, batch_size=200, seed=0)
  with pytest.raises(ConfigError, match="data.seq_len=0"):
    list(sequences.eval_batches(IDS, seq_len=0, batch_size=4))
