"""Model families: one module per family, found by name.

A family turns a config into what the trainer needs and knows how to judge
the result (see `base.Family`). The command line picks the family of
`config.model.name`; adding a family adds a module and a `register` call,
and edits no trainer:

    from dblocks_jax import families
    families.register("my_family", MyFamily())
    families.train_and_evaluate(config, workdir)   # any registered family

This package is the config layer: the families, the run set-up that turns
a config into a trainer (`common`), a run's workdir (`runs`), a config's
whole run (`train.train_and_evaluate`), its training FLOPs (`flops`) and
the config wiring of the evaluation (`evaluation`).
"""

import importlib

from dblocks_jax.families.base import Experiment, Family
from dblocks_jax.families.common import end_to_end_config

# Built-in families, imported on first use: name -> module with FAMILY.
_BUILT_IN = {
  "vit": "dblocks_jax.families.vit",
  "dit": "dblocks_jax.families.dit",
  "mdm": "dblocks_jax.families.mdm",
  "ar": "dblocks_jax.families.ar",
  "recurrent": "dblocks_jax.families.recurrent",
}
_REGISTRY: dict[str, Family] = {}


def register(name: str, family: Family) -> None:
  """Makes `family` the family of `config.model.name == name`."""
  if not isinstance(family, Family):
    raise TypeError(
      f"family={type(family).__name__} does not implement the Family"
      " protocol (build, train_data, batch_spec, evaluator, describe)."
    )
  _REGISTRY[name] = family


def get(name: str) -> Family:
  """The family registered as `name` (built-ins are imported on demand)."""
  if name not in _REGISTRY and name in _BUILT_IN:
    register(name, importlib.import_module(_BUILT_IN[name]).FAMILY)
  if name not in _REGISTRY:
    from dblocks_jax.errors import ConfigError

    raise ConfigError(
      f"model.name={name!r} is not a known family; choose one of"
      f" {names()} (or register one with dblocks_jax.register_family)."
    )
  return _REGISTRY[name]


def names() -> list[str]:
  return sorted(set(_BUILT_IN) | set(_REGISTRY))


def __getattr__(name: str):
  # `train_and_evaluate` imports the trainer: only when asked for.
  if name == "train_and_evaluate":
    from dblocks_jax.families.train import train_and_evaluate

    return train_and_evaluate
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
  "Experiment",
  "Family",
  "end_to_end_config",
  "get",
  "names",
  "register",
  "train_and_evaluate",
]
