"""Errors that the command line reports as one line, without a traceback."""


class ConfigError(ValueError):
  """A config field holds a value that cannot work; the message says why."""


class DataError(ConfigError):
  """A dataset is unknown or missing; the message says how to get it."""


class TopologyError(ConfigError):
  """A workdir holds a run whose block topology differs from the config."""


class NonFiniteLossError(RuntimeError):
  """Training produced NaN or Inf; the message names the step and the block."""
