"""Stopping on signals: SIGTERM (what TPU VMs and Slurm send) and SIGINT
finish the current step, the trainer checkpoints and raises `Preempted`.

A second SIGINT stops at once. A multi-process run agrees on the stop at a
log boundary, where every process meets.
"""

import signal
import threading

import jax
import numpy as np


class StopSignals:
  """Within `with`, SIGTERM and SIGINT are recorded (`signal_name`) instead
  of stopping the process; a second SIGINT raises KeyboardInterrupt. Only
  the main thread can install handlers; elsewhere nothing changes."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal_name: str | None = None
    self._previous = {}

  def _handle(self, signum, frame):
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name

  def __enter__(self) -> "StopSignals":
    if threading.current_thread() is threading.main_thread():
      for signum in self.SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


def stop_agreed(signal_name: str | None, at_log_boundary: bool) -> bool:
  """Whether every process has been asked to stop: this one's signal in a
  single-process run; in a multi-process run, any process's signal, asked
  only at log boundaries (where they all meet)."""
  if jax.process_count() == 1:
    return signal_name is not None
  if not at_log_boundary:
    return False
  from jax.experimental import multihost_utils

  flags = multihost_utils.process_allgather(np.asarray(signal_name is not None))
  return bool(np.any(flags))
