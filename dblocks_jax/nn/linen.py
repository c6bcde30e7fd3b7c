"""Linen modules as NNX parts, through flax's `nnx.bridge`.

    layer = FromLinen(MyLinenLayer(width=64), h, cond, rngs=rngs,
                      train_kwarg="train")

`FromLinen` initialises the Linen module on sample inputs and holds its
variables as NNX state: `params` become `nnx.Param` (trained by the engine),
other collections such as `batch_stats` are carried through each step and
updated in training, and Dropout draws from the step's keys. The engine sets
training or evaluation mode (`.train()` / `.eval()`); the wrapper passes it
on as `train_kwarg=True/False` (e.g. Linen's `train: bool` argument) and makes
the non-parameter collections mutable in training.
"""

from collections.abc import Sequence

from flax import nnx


class FromLinen(nnx.Module):
  """A Linen module as an NNX module (see the module docstring).

  Args:
    module: the Linen module (unbound).
    *sample_args: example inputs that fix the variables' shapes.
    rngs: `nnx.Rngs` with a `params` stream (and `dropout` if it drops).
    train_kwarg: the keyword the Linen module takes for training mode
      (e.g. "train"), or None when it has none.
    mutable: the collections it updates in training (BatchNorm's
      "batch_stats").
    **sample_kwargs: example keyword inputs.
  """

  def __init__(
    self,
    module,
    *sample_args,
    rngs: nnx.Rngs,
    train_kwarg: str | None = None,
    mutable: Sequence[str] = ("batch_stats",),
    **sample_kwargs,
  ):
    self.train_kwarg = train_kwarg
    self.mutable = tuple(mutable)
    self.deterministic = False
    self.linen = nnx.bridge.ToNNX(module, rngs=rngs)
    if train_kwarg is not None:
      sample_kwargs[train_kwarg] = False
    nnx.bridge.lazy_init(self.linen, *sample_args, **sample_kwargs)

  def __call__(self, *args, **kwargs):
    train = not self.deterministic
    if self.train_kwarg is not None:
      kwargs[self.train_kwarg] = train
    mutable = list(self.mutable) if train and self.mutable else False
    return self.linen(*args, mutable=mutable, **kwargs)
