"""Errors that the command line reports as one line, without a traceback."""

import contextlib
import importlib
import re


class ConfigError(ValueError):
  """A config field holds a value that cannot work; the message says why."""


class DataError(ConfigError):
  """A dataset is unknown or missing; the message says how to get it."""


class TopologyError(ConfigError):
  """A workdir holds a run whose block topology differs from the config."""


class NonFiniteLossError(RuntimeError):
  """Training produced NaN or Inf; the message names the step and the block."""


class CheckpointError(RuntimeError):
  """No intact checkpoint to read, or a checkpoint write failed; the message
  names the directory, what is intact and what to do."""


class WorkdirLockedError(RuntimeError):
  """Another live run holds the workdir; the message names it."""


class MissingExtraError(ImportError):
  """An optional dependency is not installed; the message names the extra of
  `pip install 'dblocks_jax[EXTRA]'` that brings it."""


class Preempted(Exception):
  """SIGTERM or SIGINT stopped training after a checkpoint was written."""

  def __init__(self, message: str, signal_name: str, step: int):
    super().__init__(message)
    self.signal_name = signal_name
    self.step = step


# The optional dependencies: top-level module -> (PyPI package, the extra of
# setup.cfg that installs it).
OPTIONAL_MODULES = {
  "sentencepiece": ("sentencepiece", "lm"),
  "mauve": ("mauve-text", "lm"),
  "safetensors": ("safetensors", "weights"),
}


def optional_import(module: str, needed_by: str):
  """`import module` for an optional dependency, or a one-line
  MissingExtraError: "{needed_by} needs {package}: pip install
  'dblocks_jax[{extra}]'".

  Args:
    module: the module to import, e.g. "mauve" or "safetensors.numpy"; its
      top-level name must be in OPTIONAL_MODULES.
    needed_by: what needs it, e.g. "the language models' evaluation".
  """
  package, extra = OPTIONAL_MODULES[module.partition(".")[0]]
  try:
    return importlib.import_module(module)
  except ModuleNotFoundError as e:
    raise MissingExtraError(
      f"{needed_by} needs {package}: pip install 'dblocks_jax[{extra}]'"
    ) from e


# The command line's exit statuses.
EXIT_CONFIG = 2  # ConfigError (and the damaged-data and bad-file errors).
EXIT_NON_FINITE = 3  # NonFiniteLossError.
EXIT_CHECKPOINT = 4  # CheckpointError.
EXIT_LOCKED = 5  # WorkdirLockedError.
EXIT_PREEMPTED = 75  # Preempted: resume with the same command (EX_TEMPFAIL).


# Library arguments -> the config fields that fill them (the command line's
# names). The library names its arguments; the config layer renames them.
CONFIG_FIELDS = {
  "num_blocks": "blocks.num_blocks",
  "num_layers": "model.num_layers",
  "layer_distribution": "blocks.layer_distribution",
  "gamma": "blocks.gamma",
  "partition": "blocks.partition",
  "boundaries": "blocks.boundaries",
  "sharing": "blocks.sharing",
  "schedule": "blocks.schedule",
  "train_blocks": "blocks.train",
  "offload": "blocks.offload",
  "sampling": "blocks.sigma_sampling",
  "sigma_min": "diffusion.sigma_min",
  "sigma_max": "diffusion.sigma_max",
  "p_std": "diffusion.p_std",
  "sigma_data": "diffusion.sigma_data",
  "block_groups": "parallel.block_groups",
  "data_shards": "parallel.data_shards",
  "num_steps": "sampler.num_steps",
  "method": "sampler.method",
  "grid": "sampler.grid",
  "estimate": "sampler.estimate",
  "guidance_scale": "sampler.guidance_scale",
  "readout_token": "model.readout_token",
  "modulation": "model.modulation",
  "label_dropout": "model.label_dropout",
  "log_every": "log_every_steps",
  "checkpoint_every": "checkpoint_every_steps",
  "keep_checkpoints": "keep_checkpoints",
  "accumulation_steps": "accumulation_steps",
}


@contextlib.contextmanager
def config_fields(fields=None):
  """Re-raises a library ValueError as a ConfigError naming config fields.

  Inside, `gamma=0.7 is outside [0, 0.5]` becomes `blocks.gamma=0.7 is
  outside [0, 0.5]`, the command line's one-line error.
  """
  fields = CONFIG_FIELDS if fields is None else fields
  try:
    yield
  except ValueError as e:
    message = str(e)
    for argument, field in fields.items():
      message = re.sub(rf"(?<![\w.]){argument}=", f"{field}=", message)
    raise ConfigError(message) from e
