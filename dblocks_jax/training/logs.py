"""The run's log: step metrics gathered in a window, fetched at log
boundaries, checked for NaN, summarised and written.

Every `log_every` steps the window is fetched from the devices (one host
transfer per window, not per step), a non-finite loss stops the run naming
the step and the block, and one line (step, loss, steps/s, ETA) goes to
`metrics.jsonl`, absl logging and, while `report` is on, stderr.
"""

import collections
import sys
from collections.abc import Callable

import numpy as np
from absl import logging

from dblocks_jax.errors import NonFiniteLossError
from dblocks_jax.training import metrics as metrics_lib
from dblocks_jax.training.placement import fetch


class StepLog:
  """The window of step metrics and the run's progress.

  Args:
    writer: where scalars go (`metrics.jsonl`, TensorBoard).
    blockwise: add per-block means of the losses.
    kept: () -> what a stopped run keeps, in words (for the message of a
      NaN loss, which also says what to change).
  """

  def __init__(
    self,
    writer: metrics_lib.MetricWriter,
    *,
    blockwise: bool,
    kept: Callable[[], str],
  ):
    self.writer = writer
    self.blockwise = blockwise
    self.kept = kept
    self.progress: metrics_lib.Progress | None = None
    self.report = False  # Progress lines on stderr (during `fit`).
    self._window: list[tuple[int, list[int], dict]] = []

  def start(self, start: int, end: int, *, report: bool) -> None:
    """Starts the progress of a run from step `start` to `end`."""
    self.progress = metrics_lib.Progress(end, min(start, end))
    self.report = report

  def add(self, step: int, blocks: list[int], metrics: dict) -> None:
    """Keeps a step's metrics (device arrays) until the next `flush`."""
    self._window.append((step, blocks, metrics))

  def flush(self, done: int, total_steps: int) -> dict:
    """Fetches the window, stops on NaN, writes one line.

    Returns:
      The window's scalars ({} when it was empty).

    Raises:
      NonFiniteLossError: a loss in the window is NaN or Inf.
    """
    fetched = []
    window = fetch([values for _, _, values in self._window])  # One call.
    for (step, blocks_now, _), values in zip(self._window, window, strict=True):
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
        self.writer.flush()
        raise NonFiniteLossError(self._non_finite(step, block, bad_batch))
    if not fetched:
      return {}
    scalars = summarise(fetched, self.blockwise)
    if self.progress is None:
      end = max(total_steps, done)
      self.progress = metrics_lib.Progress(end, min(done, end))
    scalars.update(self.progress.update(done))
    self.writer.write_scalars(done, scalars)
    self.say(f"{self.progress.describe(done)} loss {scalars['loss']:.4f}")
    return scalars

  def _non_finite(self, step: int, block: int, bad_batch: bool) -> str:
    where = f" (block {block})" if self.blockwise else ""
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
    return f"non-finite loss at step {step}{where}; {self.kept()}. {cause}."

  def evaluation(self, done: int, result: dict) -> None:
    """Writes an evaluation's numbers as eval/NAME and one line."""
    numbers = metrics_lib.numeric(result)
    self.writer.write_scalars(done, numbers)
    logging.info("Eval at step %d: %s", done, result)
    if self.report:
      shown = " ".join(f"{k}={v:.4g}" for k, v in numbers.items())
      print(f"eval at step {done}: {shown}", file=sys.stderr, flush=True)

  def say(self, line: str) -> None:
    """One line to absl logging, and to stderr while reporting."""
    logging.info("%s", line)
    if self.report:
      print(line, file=sys.stderr, flush=True)


def summarise(window, blockwise: bool) -> dict:
  """Means over logged steps, overall and per block."""
  scalars = collections.defaultdict(list)
  for _, block, m in window:
    for name, value in m.items():
      scalars[name].append(value)
      if blockwise and name in ("loss", "ce", "mse"):
        scalars[f"{name}/block_{block}"].append(value)
  return {name: float(np.mean(v)) for name, v in scalars.items()}
