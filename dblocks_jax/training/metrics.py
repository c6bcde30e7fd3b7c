"""Metrics files of a run and training progress.

`MetricWriter` appends one JSON object per line to `<workdir>/metrics.jsonl`
and writes whole JSON files (evaluation results, memory use, the config) next
to it. Only process 0 writes; the other processes stay silent. Non-finite
floats (NaN, +-Inf) are written as `null`, so that every line is strict JSON
that any tool can parse; the key stays, so a NaN loss is still visible.
"""

import collections
import contextlib
import json
import math
import numbers
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
from absl import logging

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _to_json(value: Any) -> Any:
  """Converts numpy and jax values to plain JSON types; NaN and Inf to None."""
  if isinstance(value, Mapping):
    return {str(k): _to_json(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [_to_json(v) for v in value]
  if isinstance(value, jax.Array | np.ndarray | np.generic):
    value = np.asarray(value)
    return _to_json(value.tolist() if value.ndim else value.item())
  if isinstance(value, bool | numbers.Integral):
    return value if isinstance(value, bool) else int(value)
  if isinstance(value, numbers.Real):
    value = float(value)
    return value if math.isfinite(value) else None
  return value


def _scalar(name: str, value: Any) -> float | int | None:
  """One metric value as a python number (None when not finite)."""
  array = np.asarray(value)
  if array.size != 1 or not (
    np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_
  ):
    raise TypeError(
      f"Metric {name!r} must be a number, got {type(value).__name__} "
      f"with shape {array.shape} and dtype {array.dtype}."
    )
  return _to_json(array.reshape(()).item())


def _format_value(value: float | int | None) -> str:
  if value is None:
    return "nan"
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


class MetricWriter:
  """Writes `<workdir>/metrics.jsonl` from process 0.

  Every line is a JSON object with a "step" key. Each `write_scalars` call is
  mirrored as one compact line to absl logging, and to TensorBoard files in
  `<workdir>/tensorboard` (through clu) when `tensorboard=True` and
  TensorFlow is installed. Lines are flushed as they are written, so a killed
  run keeps them; a resumed run appends to the existing file.
  """

  def __init__(
    self,
    workdir: str | os.PathLike[str] | None,
    *,
    tensorboard: bool = False,
    process_index: int | None = None,
  ):
    """Opens the metrics file of `workdir` for appending.

    Args:
      workdir: the run directory, created when missing; None writes no
        files (the lines still go to absl logging).
      tensorboard: also write TensorBoard summaries (needs TensorFlow).
      process_index: the index of this process; `jax.process_index()` when
        None. Processes other than 0 write nothing.
    """
    self._workdir = (
      None if workdir is None else os.path.abspath(os.path.expanduser(workdir))
    )
    if process_index is None:
      process_index = jax.process_index()
    self._active = process_index == 0
    self._file = None
    self._tb_writer = None
    self._closed = False
    if not self._active or self._workdir is None:
      return
    os.makedirs(self._workdir, exist_ok=True)
    path = os.path.join(self._workdir, METRICS_FILE)
    needs_newline = _ends_without_newline(path)
    self._file = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
    if needs_newline:
      # A killed run left half a line; end it so that new lines stay intact.
      self._file.write("\n")
    if tensorboard:
      self._tb_writer = _make_tensorboard_writer(
        os.path.join(self._workdir, TENSORBOARD_DIR)
      )

  @property
  def workdir(self) -> str | None:
    """The absolute path of the run directory (None: no files)."""
    return self._workdir

  def write_scalars(
    self,
    step: int,
    scalars: Mapping[str, float | int | np.ndarray | jax.Array],
  ) -> None:
    """Appends `{"step": step, **scalars}` as one line.

    Args:
      step: the training step.
      scalars: metric names to numbers (python, numpy or one-element jax
        arrays). Non-finite values are written as `null`.

    Raises:
      TypeError: a value is not a single number.
      ValueError: a metric is called "step", or the writer is closed.
    """
    if self._closed:
      raise ValueError("MetricWriter is closed.")
    if "step" in scalars:
      raise ValueError('"step" is reserved for the step number.')
    if not self._active:
      return
    step = int(step)
    values = {name: _scalar(name, value) for name, value in scalars.items()}
    if self._file is not None:
      self._file.write(json.dumps({"step": step, **values}) + "\n")
    logging.info(
      "step %d: %s",
      step,
      " ".join(f"{k}={_format_value(v)}" for k, v in values.items()),
    )
    if self._tb_writer is not None:
      self._tb_writer.write_scalars(
        step, {k: math.nan if v is None else v for k, v in values.items()}
      )

  def write_json(self, name: str, payload: Mapping[str, Any]) -> str:
    """Writes `<workdir>/<name>` atomically (a temporary file, then a rename).

    Args:
      name: the file name relative to the workdir, e.g. "eval.json".
      payload: a dict of JSON-able values; numpy and jax values are
        converted, non-finite floats become `null`.

    Returns:
      The absolute path of the file (also on processes that write nothing).
    """
    if self._workdir is None:
      raise ValueError(f"cannot write {name}: this writer has no workdir.")
    path = os.path.join(self._workdir, name)
    if not self._active:
      return path
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    text = json.dumps(_to_json(payload), indent=2, allow_nan=False) + "\n"
    fd, tmp_path = tempfile.mkstemp(
      dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp"
    )
    try:
      with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp_path, path)
    except BaseException:
      with contextlib.suppress(OSError):
        os.remove(tmp_path)
      raise
    return path

  def flush(self) -> None:
    """Pushes the written lines to disk."""
    if self._file is not None and not self._file.closed:
      self._file.flush()
      os.fsync(self._file.fileno())
    if self._tb_writer is not None:
      self._tb_writer.flush()

  def close(self) -> None:
    """Flushes and closes the files; later writes raise."""
    if self._closed:
      return
    self.flush()
    if self._file is not None:
      self._file.close()
    if self._tb_writer is not None:
      self._tb_writer.close()
    self._closed = True

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def _ends_without_newline(path: str) -> bool:
  """Whether `path` exists, is not empty and its last byte is not a newline."""
  try:
    with open(path, "rb") as f:
      f.seek(0, os.SEEK_END)
      if f.tell() == 0:
        return False
      f.seek(-1, os.SEEK_END)
      return f.read(1) != b"\n"
  except FileNotFoundError:
    return False


def _make_tensorboard_writer(logdir: str):
  """A clu SummaryWriter, or None (with a warning) without TensorFlow."""
  try:
    from clu import metric_writers
  except ImportError as e:
    logging.warning(
      "TensorBoard logging is off: %s. Install it with "
      "`pip install dblocks_jax[tensorboard]`; metrics still go to %s.",
      e,
      METRICS_FILE,
    )
    return None
  return metric_writers.SummaryWriter(logdir)


def read_metrics(workdir: str | os.PathLike[str]) -> list[dict[str, Any]]:
  """Reads `<workdir>/metrics.jsonl` in file order.

  A line that does not parse (the last line of a killed run) is skipped with
  a warning. A resumed run may repeat steps after its last checkpoint.

  Args:
    workdir: the run directory.

  Returns:
    One dict per line; an empty list when the file does not exist.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  records = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      line = line.strip()
      if not line:
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        logging.warning("Skipping unreadable line %d of %s.", number, path)
        continue
      if isinstance(record, dict):
        records.append(record)
  return records


def numeric(result: Mapping[str, Any]) -> dict[str, float | int]:
  """The numbers of an evaluation result, as `eval/NAME` scalars."""
  return {
    f"eval/{k}": v
    for k, v in result.items()
    if isinstance(v, int | float) and not isinstance(v, bool)
  }


def format_duration(seconds: float) -> str:
  """Formats seconds as "1h02m05s", "1m05s" or "5s"; "?" when unknown."""
  if seconds is None or not math.isfinite(seconds) or seconds < 0:
    return "?"
  total = int(round(seconds))
  hours, rest = divmod(total, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f"{hours}h{minutes:02d}m{secs:02d}s"
  if minutes:
    return f"{minutes}m{secs:02d}s"
  return f"{secs}s"


class Progress:
  """Steps/s and ETA for a loop that runs from `start_step` to `total_steps`.

  The rate is measured over the last `window` calls of `update`, on a clock
  that stops inside `paused()`, so evaluation and checkpointing do not slow
  the reported training speed. The first update only starts the clock (it
  usually includes compilation), so it reports no rate (NaN).
  """

  def __init__(
    self,
    total_steps: int,
    start_step: int = 0,
    *,
    clock: Callable[[], float] = time.monotonic,
    window: int = 20,
  ):
    """Starts tracking.

    Args:
      total_steps: the step at which the loop ends.
      start_step: the step the loop starts at (a resumed run starts later).
      clock: seconds as a float; injectable for tests.
      window: how many recent updates the rate is measured over (>= 2).
    """
    if window < 2:
      raise ValueError(f"window must be at least 2, got {window}.")
    if not 0 <= start_step <= total_steps:
      raise ValueError(
        f"Need 0 <= start_step <= total_steps, got {start_step} and "
        f"{total_steps}."
      )
    self._total_steps = int(total_steps)
    self._start_step = int(start_step)
    self._clock = clock
    self._points: collections.deque[tuple[float, int]] = collections.deque(
      maxlen=window
    )
    self._paused_seconds = 0.0
    self._pause_depth = 0
    self._pause_start = 0.0

  @property
  def start_step(self) -> int:
    """The step the loop started at."""
    return self._start_step

  @property
  def total_steps(self) -> int:
    """The step at which the loop ends."""
    return self._total_steps

  def _active_time(self) -> float:
    """The clock minus the time spent paused."""
    return self._clock() - self._paused_seconds

  def update(self, step: int) -> dict[str, float]:
    """Records that `step` is reached and returns the current statistics.

    Args:
      step: the current step. A repeated step adds no point; a step below the
        last one restarts the measurement.

    Returns:
      {"steps_per_sec", "eta_seconds", "percent"}; the first two are NaN
      until two different steps were seen.
    """
    step = int(step)
    if self._points and step < self._points[-1][1]:
      self._points.clear()
    if not self._points or step != self._points[-1][1]:
      self._points.append((self._active_time(), step))
    rate = math.nan
    if len(self._points) >= 2:
      (t0, s0), (t1, s1) = self._points[0], self._points[-1]
      if t1 > t0:
        rate = (s1 - s0) / (t1 - t0)
    remaining = max(self._total_steps - step, 0)
    if remaining == 0:
      eta = 0.0
    elif rate > 0:
      eta = remaining / rate
    else:
      eta = math.nan
    percent = (
      100.0 * step / self._total_steps if self._total_steps > 0 else 100.0
    )
    return {"steps_per_sec": rate, "eta_seconds": eta, "percent": percent}

  def describe(self, step: int) -> str:
    """Updates and formats the statistics as one line.

    Args:
      step: the current step, as for `update`.

    Returns:
      E.g. "step 1200/5000 (24.0%) 8.31 steps/s ETA 7m37s"; "?" stands for a
      rate or ETA that is not known yet.
    """
    stats = self.update(step)
    rate = stats["steps_per_sec"]
    rate_text = "?" if math.isnan(rate) else f"{rate:.2f}"
    return (
      f"step {int(step)}/{self._total_steps} ({stats['percent']:.1f}%) "
      f"{rate_text} steps/s ETA {format_duration(stats['eta_seconds'])}"
    )

  @contextlib.contextmanager
  def paused(self) -> Iterator[None]:
    """Time spent inside does not count against the rate; may be nested."""
    if self._pause_depth == 0:
      self._pause_start = self._clock()
    self._pause_depth += 1
    try:
      yield
    finally:
      self._pause_depth -= 1
      if self._pause_depth == 0:
        self._paused_seconds += self._clock() - self._pause_start
