"""A network split into parts: shared, per-block, and fixed.

`BlockwiseModel` holds NNX modules by part name in three groups:

  shared  trained with every block (the `shared` sharing mode's stem and
          readout; the whole network of an end-to-end baseline);
  blocks  block b's own parts: its layers (part "layers") and, in the
          `independent` mode, its own copy of the stem and readout;
  fixed   never trained (e.g. the `independent` mode's seeded target table).

`split` turns it into static definitions and pytrees of arrays, which is what
the jitted steps, the optimizers and the checkpoints see. Each part splits
into three kinds of state:

  params  `nnx.Param`: trained;
  rest    any other variable (BatchNorm statistics, fixed tables): carried
          through the step, which returns its new value;
  rngs    `nnx.RngState` (the keys of Dropout streams): never stored. Every
          step derives fresh streams from its own PRNG key, so a run's
          randomness is a function of its seed and step only, and no PRNG key
          enters a checkpoint.
"""

import dataclasses
import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from dblocks_jax.blockwise.plan import SHARING_MODES, BlockPlan

Parts = dict[str, nnx.Module]
LAYERS = "layers"  # The part name of a block's layers.


@dataclasses.dataclass
class BlockwiseModel:
  """NNX modules by part name: shared, one dict per block, fixed.

  Build it with `BlockwiseModel.build` (block-wise) or
  `BlockwiseModel.end_to_end` (a baseline: every part shared, no blocks).
  """

  shared: Parts
  blocks: list[Parts]
  fixed: Parts

  @property
  def num_blocks(self) -> int:
    return len(self.blocks)

  @classmethod
  def build(
    cls,
    plan: BlockPlan,
    *,
    shell: Callable[[nnx.Rngs], Mapping[str, nnx.Module]],
    layer: Callable[[nnx.Rngs], nnx.Module] | None = None,
    layers: Callable[[int, nnx.Rngs], nnx.Module] | None = None,
    fixed: Callable[[nnx.Rngs], Mapping[str, nnx.Module]] | None = None,
    sharing: str = "shared",
    seed: int = 0,
    fixed_seed: int = 0,
    held_blocks=None,
  ) -> "BlockwiseModel":
    """The block-wise network of `plan` from your own parts.

    Args:
      plan: the block plan (how many layers each block holds).
      shell: rngs -> {name: module}, the parts outside the layers (stem,
        embedders, readout). In the `shared` mode it is built once and
        trained with every block; in `independent` every block owns one.
      layer: rngs -> one residual layer; a block of n layers is
        `nn.Stack` of n of them, called as `layers(h, *args)`.
      layers: (n, rngs) -> a module holding n layers (instead of `layer`).
      fixed: rngs -> {name: module} never trained, built once from
        `fixed_seed` (e.g. a fixed target table).
      sharing: "shared" (the official code) or "independent".
      seed: parameter seed. `shared`: one stream for the shell, then the
        blocks' layers in order; `independent`: block b draws from
        seed + 1000 (b + 1).
      fixed_seed: parameter seed of the fixed parts.
      held_blocks: the blocks to build as arrays (None = all); the others
        are built abstractly (shapes only), as a per-block job needs.

    Raises:
      TypeError: a factory does not return modules.
      ValueError: an unknown sharing mode, or a shell part named "layers".
    """
    if not isinstance(plan, BlockPlan):
      raise TypeError(
        f"plan={plan!r} is not a BlockPlan; make one with BlockPlan.create."
      )
    if (layer is None) == (layers is None):
      raise TypeError(
        "give exactly one of layer= (rngs -> one layer) or layers= ((n, rngs)"
        " -> a module of n layers)."
      )
    if sharing not in SHARING_MODES:
      raise ValueError(
        f"sharing={sharing!r} is unknown; choose one of {SHARING_MODES}."
      )
    if layers is None:
      layers = functools.partial(_stack_of, layer)
    held = set(range(plan.num_blocks) if held_blocks is None else held_blocks)

    def make_shell(rngs) -> Parts:
      parts = _check_parts(shell(rngs), "shell")
      if LAYERS in parts:
        raise ValueError(
          f"shell returned a part named {LAYERS!r}; that name holds a block's"
          " layers. Rename it."
        )
      return parts

    def make_layers(n, rngs) -> nnx.Module:
      module = layers(n, rngs)
      if not isinstance(module, nnx.Module):
        raise TypeError(
          f"the layers factory returned {type(module).__name__}, not an"
          " nnx.Module; wrap Linen modules with dblocks_jax.nn.FromLinen."
        )
      if hasattr(module, "__len__") and len(module) != n:
        raise ValueError(
          f"layers({n}, rngs) returned a stack of {len(module)} layers; the"
          f" plan gives this block {n} (layers_per_block"
          f"={list(plan.layers_per_block)}). Build n layers."
        )
      return module

    fixed_parts = {}
    if fixed is not None:
      fixed_parts = _check_parts(fixed(_rngs(fixed_seed)), "fixed")
    if sharing == "shared":
      rngs = _rngs(seed)
      shared = make_shell(rngs)
      blocks = [{LAYERS: make_layers(n, rngs)} for n in plan.layers_per_block]
      return cls(shared, blocks, fixed_parts)

    def make_block(b: int) -> Parts:
      rngs = _rngs(seed + 1000 * (b + 1))
      parts = make_shell(rngs)
      parts[LAYERS] = make_layers(plan.layers_per_block[b], rngs)
      return parts

    # A per-block job builds the other blocks abstractly: their parameters
    # never exist in its memory.
    blocks = [
      make_block(b)
      if b in held
      else nnx.eval_shape(functools.partial(make_block, b))
      for b in range(plan.num_blocks)
    ]
    return cls({}, blocks, fixed_parts)

  @classmethod
  def end_to_end(
    cls, parts: Mapping[str, nnx.Module], fixed=None
  ) -> "BlockwiseModel":
    """A network trained as one piece: every part shared, no blocks."""
    return cls(
      _check_parts(parts, "parts"),
      [],
      _check_parts(fixed or {}, "fixed"),
    )


def _rngs(seed: int) -> nnx.Rngs:
  return nnx.Rngs(params=seed, dropout=seed)


def _stack_of(layer, n: int, rngs) -> nnx.Module:
  from dblocks_jax.nn.layers import Stack

  return Stack([layer(rngs) for _ in range(n)])


def _check_parts(parts, what: str) -> Parts:
  if not isinstance(parts, Mapping):
    raise TypeError(
      f"{what} returned {type(parts).__name__}; return a dict of named"
      " nnx.Module parts, e.g. {'stem': ..., 'readout': ...}."
    )
  for name, module in parts.items():
    if not isinstance(name, str) or not isinstance(module, nnx.Module):
      raise TypeError(
        f"{what} part {name!r} is {type(module).__name__}, not an"
        " nnx.Module; wrap Linen modules with dblocks_jax.nn.FromLinen."
      )
  return dict(parts)


# ----- Split and merge ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PartDef:
  """The static side of one part: its graph and the shape of its RNGs."""

  graphdef: nnx.GraphDef
  rng_signature: tuple
  rng_template: nnx.State = dataclasses.field(compare=False, hash=False)


PartDefs = tuple[tuple[str, PartDef], ...]


@dataclasses.dataclass(frozen=True)
class GraphDefs:
  """Static structure: part definitions of the shared, block and fixed
  groups."""

  shared: PartDefs
  blocks: tuple[PartDefs, ...]
  fixed: PartDefs

  def block_key(self, block: int) -> PartDefs:
    """Equal keys <=> equal block structure <=> one compiled step."""
    return self.blocks[block]


def _split_part(name: str, module: nnx.Module):
  try:
    graphdef, params, rngs, rest = nnx.split(
      module, nnx.Param, nnx.RngState, ...
    )
  except Exception as e:  # noqa: BLE001 - any failure names the part.
    raise TypeError(
      f"part {name!r} ({type(module).__name__}) cannot be split into NNX"
      f" state: {e}. Parts must be nnx.Module trees of nnx.Variable arrays."
    ) from e
  template = jax.eval_shape(lambda: rngs)
  signature = tuple(
    (
      path,
      type(var).__name__,
      var.get_value().shape,
      str(var.get_value().dtype),
    )
    for path, var in nnx.to_flat_state(template)
  )
  return PartDef(graphdef, signature, template), params, rest


def split_parts(parts: Mapping[str, nnx.Module]):
  """{name: module} -> (PartDefs, {"params": {...}, "rest": {...}})."""
  defs, params, rest = [], {}, {}
  for name, module in sorted(parts.items()):
    part_def, params[name], rest[name] = _split_part(name, module)
    defs.append((name, part_def))
  return tuple(defs), {"params": params, "rest": rest}


def split(model: BlockwiseModel):
  """-> (GraphDefs, shared arrays, [block arrays], fixed arrays).

  Arrays of a group are {"params": {part: State}, "rest": {part: State}}.
  """
  shared_defs, shared = split_parts(model.shared)
  block_defs, blocks = [], []
  for parts in model.blocks:
    defs, arrays = split_parts(parts)
    block_defs.append(defs)
    blocks.append(arrays)
  fixed_defs, fixed = split_parts(model.fixed)
  defs = GraphDefs(shared_defs, tuple(block_defs), fixed_defs)
  return defs, shared, blocks, fixed


def fresh_rngs(template: nnx.State, key: jax.Array | None) -> nnx.State:
  """New RNG streams of `template`'s structure, from `key` (counts 0)."""
  if key is None:
    key = jax.random.key(0)
  flat = []
  for i, (path, var) in enumerate(nnx.to_flat_state(template)):
    value = var.get_value()
    if isinstance(var, nnx.RngKey):
      new = jax.random.fold_in(key, i)
    else:
      new = jnp.zeros(value.shape, value.dtype)
    flat.append((path, var.replace(new)))
  return nnx.from_flat_state(flat)


def merge(
  defs: PartDefs,
  arrays: Mapping,
  *,
  key: jax.Array | None = None,
  train: bool = False,
) -> Parts:
  """Rebuilds the modules of `defs` from their arrays.

  Args:
    defs: the parts' definitions.
    arrays: {"params": {name: State}, "rest": {name: State}}.
    key: seeds the parts' RNG streams (None: a fixed key, for inference).
    train: sets training mode (`module.train()`: Dropout on, BatchNorm
      updating its statistics) or evaluation mode (`module.eval()`).
  """
  parts = {}
  for i, (name, part_def) in enumerate(defs):
    part_key = None if key is None else jax.random.fold_in(key, i)
    module = nnx.merge(
      part_def.graphdef,
      arrays["params"][name],
      fresh_rngs(part_def.rng_template, part_key),
      arrays["rest"][name],
    )
    module.train() if train else module.eval()
    parts[name] = module
  return parts


def rest_of(parts: Mapping[str, nnx.Module]) -> dict:
  """{name: the non-parameter, non-RNG state} of merged parts."""
  return {
    name: nnx.split(module, nnx.Param, nnx.RngState, ...)[3]
    for name, module in parts.items()
  }
