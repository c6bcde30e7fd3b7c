"""A model split into parts: shared, per-block, and fixed.

`BlockwiseModel` holds NNX modules by part name:
  shared  trained with every block (the `shared` sharing mode's stem/readout;
          the whole network of an end-to-end baseline);
  blocks  block b's own parts (its layers; in the `independent` mode also its
          own copy of stem and readout);
  fixed   never trained (the `independent` mode's seeded target table).
`split` turns it into graph definitions (static) and pytrees of arrays, which
is what the jitted steps, the optimizers and the checkpoints see.
"""

import dataclasses
from collections.abc import Mapping

import jax
from flax import nnx

Modules = dict[str, nnx.Module]


@dataclasses.dataclass
class BlockwiseModel:
  shared: Modules
  blocks: list[Modules]
  fixed: Modules

  @property
  def num_blocks(self) -> int:
    return len(self.blocks)


@dataclasses.dataclass(frozen=True)
class GraphDefs:
  """Static structure: graph definitions by part, per group."""

  shared: tuple[tuple[str, nnx.GraphDef], ...]
  blocks: tuple[tuple[tuple[str, nnx.GraphDef], ...], ...]
  fixed: tuple[tuple[str, nnx.GraphDef], ...]

  def block_key(self, block: int):
    """Equal keys <=> equal block structure <=> one compiled step."""
    return self.blocks[block]


def _split_trainable(modules: Modules):
  graphdefs, params = [], {}
  for name, module in sorted(modules.items()):
    graphdef, state, rest = nnx.split(module, nnx.Param, ...)
    if jax.tree_util.tree_leaves(rest):
      raise ValueError(
        f"part {name!r} holds non-parameter state {rest}; only nnx.Param"
        " is supported in trained parts"
      )
    graphdefs.append((name, graphdef))
    params[name] = state
  return tuple(graphdefs), params


def split(model: BlockwiseModel):
  """-> (GraphDefs, shared_params, [block_params], fixed_state)."""
  shared_defs, shared_params = _split_trainable(model.shared)
  block_defs, block_params = [], []
  for modules in model.blocks:
    defs, params = _split_trainable(modules)
    block_defs.append(defs)
    block_params.append(params)
  fixed_defs, fixed_state = [], {}
  for name, module in sorted(model.fixed.items()):
    graphdef, state = nnx.split(module)
    fixed_defs.append((name, graphdef))
    fixed_state[name] = state
  graphdefs = GraphDefs(shared_defs, tuple(block_defs), tuple(fixed_defs))
  return graphdefs, shared_params, block_params, fixed_state


def merge(defs, states: Mapping[str, nnx.State]) -> Modules:
  """Rebuilds modules from `((name, graphdef), ...)` and states by name."""
  return {name: nnx.merge(graphdef, states[name]) for name, graphdef in defs}
