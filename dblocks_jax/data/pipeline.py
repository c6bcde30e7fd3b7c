"""Train iterators and eval batches for image classification, on grain."""

import os
from collections.abc import Iterator
from typing import Any

import grain
import jax
import numpy as np
from absl import flags, logging

from dblocks_jax.data import epochs, info, latents, preprocess, sources
from dblocks_jax.data.options import DataOptions
from dblocks_jax.errors import ConfigError, DataError

Batch = dict[str, np.ndarray]


def _check_batch_size(batch_size: int) -> None:
  if batch_size < 1:
    raise ConfigError(f"batch_size={batch_size} must be at least 1")


def _seeds(seed: int, process_index: int) -> tuple[int, int]:
  """Returns (shuffle seed, augmentation seed), distinct per process."""
  entropy = (seed % 2**63, process_index)
  shuffle_seed, augment_seed = np.random.SeedSequence(entropy).generate_state(2)
  return int(shuffle_seed), int(augment_seed)


def _read_options(num_workers: int) -> grain.ReadOptions:
  # Elements are whole batches, so a few in flight keep the device fed; many
  # threads only help in-process, where they overlap PIL work and file reads.
  num_threads = 2 if num_workers > 0 else min(8, os.cpu_count() or 1)
  return grain.ReadOptions(
    num_threads=num_threads, prefetch_buffer_size=2 * num_threads
  )


def _allow_unparsed_flags() -> None:
  """Lets grain's worker processes start outside `absl.app.run`.

  `mp_prefetch` reads absl flags of its own; outside an absl program (tests,
  notebooks) nothing has parsed them, so they are marked parsed with their
  defaults. A later `app.run` still parses the command line.
  """
  if not flags.FLAGS.is_parsed():
    logging.info("absl flags were not parsed; using defaults for grain")
    flags.FLAGS.mark_as_parsed()


def make_train_iterator(
  data_config: DataOptions,
  *,
  batch_size: int,
  seed: int,
  shard: tuple[int, int] | None = None,
) -> grain.DatasetIterator:
  """Returns an endless, checkpointable iterator of augmented train batches.

  This process reads every `jax.process_count()`-th example of
  `data.train_split`, reshuffled each epoch (`epochs.EpochBatches`: a batch
  is gathered at once, then augmented and normalised as one array).
  Augmentation draws from a generator keyed by the batch's position, so an
  iterator restored with `set_state` (or `grain.checkpoint.CheckpointRestore`)
  yields exactly the batches the saved one would have.

  Args:
    data_config: the `data` config.
    batch_size: examples per batch in this process.
    seed: seeds shuffling and augmentation.
    shard: (index, count): read every count-th example from the index-th;
      default (jax.process_index(), jax.process_count()). Block-parallel
      runs split a block's stream over the processes of its device group.

  Returns:
    An iterator of `{"image": [batch_size, height, width, channels] float32,
    "label": [batch_size] int32}`.
  """
  _check_batch_size(batch_size)
  if data_config.name == "latents":
    scaling = latents.read_meta(data_config.dir)["scaling_factor"]
    augment, normalise = latents.SampleLatent(scaling), None
    keys = ("mean", "std", "label")
  else:
    augment = preprocess.Augment.from_config(data_config)
    normalise = preprocess.Normalise(*info.normalisation(data_config))
    keys = ("image", "label")
  num_workers = int(data_config.num_workers)
  if num_workers < 0:
    raise ConfigError(
      f"data.num_workers={num_workers} must be 0 (in-process) or positive"
    )
  source = sources.load_split(data_config, sources.TRAIN_FIELD)
  process_index, process_count = shard or (
    jax.process_index(),
    jax.process_count(),
  )
  indices = np.arange(process_index, len(source), process_count)
  if len(indices) == 0:
    raise DataError(
      f"data.train_split={data_config.train_split!r} of {data_config.name} "
      f"leaves no examples for process {process_index} of {process_count}"
    )
  shuffle_seed, augment_seed = _seeds(seed, process_index)
  dataset = epochs.EpochBatches(
    source, batch_size=batch_size, seed=shuffle_seed, keys=keys, indices=indices
  ).random_map(augment, seed=augment_seed)
  if normalise is not None:
    dataset = dataset.map(normalise)
  iter_dataset = dataset.to_iter_dataset(_read_options(num_workers))
  if num_workers > 0:
    _allow_unparsed_flags()
    iter_dataset = iter_dataset.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=num_workers)
    )
  return iter(iter_dataset)


def _eval_batches(
  source: Any, normalise: preprocess.Normalise, batch_size: int
) -> Iterator[Batch]:
  num_examples = len(source)
  for start in range(0, num_examples, batch_size):
    stop = min(start + batch_size, num_examples)
    elements = [normalise.map(source[i]) for i in range(start, stop)]
    count = len(elements)
    image = np.stack([e["image"] for e in elements])
    label = np.asarray([e["label"] for e in elements], np.int32)
    mask = np.ones(batch_size, bool)
    if count < batch_size:
      pad = batch_size - count
      image = np.concatenate(
        [image, np.zeros((pad, *image.shape[1:]), image.dtype)]
      )
      label = np.concatenate([label, np.zeros(pad, np.int32)])
      mask[count:] = False
    yield {"image": image, "label": label, "mask": mask}


def make_eval_batches(
  data_config: DataOptions, *, batch_size: int
) -> Iterator[Batch]:
  """Returns every example of `data.eval_split` once, in order, in batches.

  No augmentation, only normalisation. The last batch is padded with zeros
  up to `batch_size`; `mask` is False on the padding. The source is opened
  (and errors raised) on this call, not on the first `next`.

  Args:
    data_config: the `data` config.
    batch_size: examples per batch.

  Returns:
    An iterator of `{"image": [batch_size, height, width, channels] float32,
    "label": [batch_size] int32, "mask": [batch_size] bool}`.
  """
  _check_batch_size(batch_size)
  if data_config.name == "latents":
    scaling = latents.read_meta(data_config.dir)["scaling_factor"]
    normalise = latents.LatentMean(scaling)
  else:
    normalise = preprocess.Normalise(*info.normalisation(data_config))
  source = sources.load_split(data_config, sources.EVAL_FIELD)
  return _eval_batches(source, normalise, batch_size)
