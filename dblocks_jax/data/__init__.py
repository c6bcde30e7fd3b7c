"""Image-classification input pipelines on grain.

`make_train_iterator` gives endless, checkpointable augmented batches;
`make_eval_batches` gives the eval split once with a padding mask;
`dataset_info` describes a configured dataset without reading it.
"""

from dblocks_jax.data.info import DatasetInfo, dataset_info
from dblocks_jax.data.options import DataOptions
from dblocks_jax.data.pipeline import make_eval_batches, make_train_iterator
from dblocks_jax.data.sources import DATASETS

__all__ = [
  "DATASETS",
  "DataOptions",
  "DatasetInfo",
  "dataset_info",
  "make_eval_batches",
  "make_train_iterator",
]
