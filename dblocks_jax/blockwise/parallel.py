"""Block-parallel training: the blocks of a job on a `block` x `data` mesh.

A job trains the blocks `T` of `blocks.train` (all B by default) on G device
groups (`parallel.block_groups`), each of D devices (`parallel.data_shards`).
Group g owns the k = |T| / G blocks T[g k : (g + 1) k], stacked along a
leading `block` axis of their parameters and optimizer states; at mesh step m
every group trains its block j = m mod k, so G blocks move at once. Inside a
group the batch is split along `data`.

Every block update is a pure function of the block and of n, the number of
updates that block has had before it (n = m div k):
  key   = fold_in(fold_in(key(seed), b), n)
  lr    = schedule(n B), the global step that update stands for in a
          sequential run of `total_steps` (B x the per-block updates)
  batch = the next batch of block b's own data stream (seed + 1 + b).
So one mesh run, one job per block, or any split of the blocks over jobs
train the same model (to float tolerance): per-block checkpoints assemble
into the mesh run's.

Communication: in the `independent` sharing mode the groups share nothing
and the compiled step has no collective across `block` (only the reductions
of the batch mean within a group). In the `shared` mode the shared parts'
gradients, clipped per group, are averaged across `block`: the shared parts
take one step per mesh step on the mean of the G groups' gradients, where
a sequential run would take G steps (a deliberate, documented difference).
Blocks trained in separate jobs cannot share parts: `shared` needs one job
with every block.
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from dblocks_jax.blockwise import steps
from dblocks_jax.errors import ConfigError

BLOCK_AXIS = "block"
DATA_AXIS = "data"


@dataclasses.dataclass(frozen=True)
class Layout:
  """Which blocks a job trains and how they map onto device groups.

  Attributes:
    blocks: the blocks this job trains, in order (T).
    num_groups: G, device groups along the mesh's `block` axis.
    data_shards: D, devices per group along the `data` axis.
    num_blocks: B, the model's blocks.
  """

  blocks: tuple[int, ...]
  num_groups: int
  data_shards: int
  num_blocks: int

  @property
  def blocks_per_group(self) -> int:
    return len(self.blocks) // self.num_groups

  @property
  def partial(self) -> bool:
    """A per-block job: some blocks are trained elsewhere."""
    return len(self.blocks) < self.num_blocks

  def group_blocks(self, group: int) -> tuple[int, ...]:
    k = self.blocks_per_group
    return self.blocks[group * k : (group + 1) * k]

  def blocks_at(self, mesh_step: int) -> tuple[int, ...]:
    """[G] the block each group trains at `mesh_step`."""
    j = mesh_step % self.blocks_per_group
    return tuple(self.group_blocks(g)[j] for g in range(self.num_groups))

  def update_count(self, mesh_step: int) -> int:
    """n: the updates each block at `mesh_step` has had before it."""
    return mesh_step // self.blocks_per_group

  def mesh_steps(self, total_steps: int) -> int:
    """Mesh steps for `total_steps` // B updates of every block."""
    return (total_steps // self.num_blocks) * self.blocks_per_group

  def block_updates(self, mesh_steps: int) -> int:
    """Block updates done after `mesh_steps` (the job's `step`)."""
    return mesh_steps * self.num_groups


def is_parallel(config) -> bool:
  """Whether `config` asks for the block-parallel trainer."""
  if config.method != "dblocks" and config.parallel.block_groups > 1:
    raise ConfigError(
      f"parallel.block_groups={config.parallel.block_groups} splits the"
      f" blocks of a block-wise run; method={config.method!r} trains one"
      " network. Set parallel.block_groups=1."
    )
  subset = tuple(config.blocks.train) and (
    len(set(config.blocks.train)) < config.blocks.num_blocks
  )
  return config.method == "dblocks" and (
    config.parallel.block_groups > 1 or bool(subset)
  )


def layout_from_config(config, layers_per_block, num_devices: int) -> Layout:
  """Validates `parallel.*` and `blocks.train` against the plan and devices."""
  num_blocks = len(layers_per_block)
  groups = int(config.parallel.block_groups)
  blocks = tuple(sorted(int(b) for b in config.blocks.train)) or tuple(
    range(num_blocks)
  )
  if any(not 0 <= b < num_blocks for b in blocks) or len(set(blocks)) != len(
    blocks
  ):
    raise ConfigError(
      f"blocks.train={list(config.blocks.train)} must list distinct blocks in"
      f" [0, {num_blocks})."
    )
  if groups < 1:
    raise ConfigError(f"parallel.block_groups={groups} must be at least 1.")
  if groups > num_devices:
    raise ConfigError(
      f"parallel.block_groups={groups} needs at least {groups} devices; this"
      f" job sees {num_devices}. Lower parallel.block_groups or run one job"
      " per block (blocks.train=[b])."
    )
  if len(blocks) % groups:
    raise ConfigError(
      f"the {len(blocks)} trained blocks (blocks.num_blocks={num_blocks},"
      f" blocks.train={list(config.blocks.train)}) are not divisible by"
      f" parallel.block_groups={groups}; choose a divisor."
    )
  if len(blocks) < num_blocks and config.blocks.sharing == "shared":
    raise ConfigError(
      f"blocks.train={list(blocks)} trains some blocks in a separate job, but"
      " blocks.sharing='shared' trains the stem and readout with every block;"
      " jobs cannot share them. Set blocks.sharing=independent."
    )
  sizes = {layers_per_block[b] for b in blocks}
  if len(blocks) > 1 and len(sizes) > 1:
    raise ConfigError(
      "block-parallel training stacks the trained blocks, which needs equal"
      f" layer counts; blocks.layer_distribution gives"
      f" {[layers_per_block[b] for b in blocks]}. Use an equal split or one"
      " job per block."
    )
  shards = int(config.parallel.data_shards) or num_devices // groups
  if shards < 1 or groups * shards > num_devices:
    raise ConfigError(
      f"parallel.block_groups={groups} x parallel.data_shards={shards} needs"
      f" {groups * shards} devices; this job sees {num_devices}."
    )
  if config.batch_size % (shards * config.accumulation_steps):
    raise ConfigError(
      f"batch_size={config.batch_size} must be divisible by"
      f" parallel.data_shards={shards} x accumulation_steps"
      f"={config.accumulation_steps}."
    )
  return Layout(blocks, groups, shards, num_blocks)


def make_mesh(layout: Layout) -> jax.sharding.Mesh:
  """The (block, data) mesh over the first G x D devices."""
  count = layout.num_groups * layout.data_shards
  return jax.make_mesh(
    (layout.num_groups, layout.data_shards),
    (BLOCK_AXIS, DATA_AXIS),
    axis_types=(AxisType.Auto, AxisType.Auto),
    devices=jax.devices()[:count],
  )


def stream_seed(seed: int, block: int) -> int:
  """The seed of block `block`'s data stream."""
  return seed + 1 + block


def update_key(train_key, block: int, update_count: int):
  """The key of block `block`'s update number `update_count`."""
  return jax.random.fold_in(jax.random.fold_in(train_key, block), update_count)


def stack(block_states, layout: Layout, mesh):
  """{block: state} -> one pytree [G, k, ...], sharded along `block`."""
  rows = [
    [block_states[b] for b in layout.group_blocks(g)]
    for g in range(layout.num_groups)
  ]
  flat = [state for row in rows for state in row]
  shape = (layout.num_groups, layout.blocks_per_group)
  sharding = NamedSharding(mesh, P(BLOCK_AXIS))
  return jax.tree.map(
    lambda *xs: jax.device_put(
      np.stack([np.asarray(x) for x in xs]).reshape(*shape, *xs[0].shape),
      sharding,
    ),
    *flat,
  )


def unstack(stacked, layout: Layout) -> dict:
  """One pytree [G, k, ...] -> {block: state}."""
  return {
    b: jax.tree.map(lambda x, g=g, j=j: x[g, j], stacked)
    for g in range(layout.num_groups)
    for j, b in enumerate(layout.group_blocks(g))
  }


def replicate(tree, mesh):
  return jax.device_put(tree, NamedSharding(mesh, P()))


def batch_sharding(mesh) -> NamedSharding:
  """[G, batch, ...]: groups along `block`, examples along `data`."""
  return NamedSharding(mesh, P(BLOCK_AXIS, DATA_AXIS))


def build_parallel_step(
  loss_fn,
  tx: optax.GradientTransformation,
  learning_rate_fn: optax.Schedule,
  mesh,
  *,
  num_blocks: int,
  clip_norm: float,
  accumulation_steps: int = 1,
  has_shared: bool = False,
):
  """Builds the mesh step.

  `step(stacked, shared, fixed, batch, keys, block_ids, local_index,
  update_count) -> (stacked, shared, metrics)`, where

    stacked      {"params", "opt_state"} of the job's blocks, [G, k, ...]
    shared       {"params", "opt_state"} of the shared parts, or {}
    batch        [G, batch, ...] (one batch per group)
    keys         [G] update keys; block_ids [G] the blocks trained
    local_index  j, the stacked slot each group trains
    update_count n, for the learning rate schedule(n B)
    metrics      [G] per group (loss, grad_norm, the objective's), and the
                 learning rate

  Each group's block is updated as by `steps.build_train_step` with that
  group's batch, key and block index; the shared gradients (clipped per
  group with the block's) are averaged across groups.
  """
  gradients = steps.make_gradients(loss_fn, accumulation_steps)

  def group_step(block, shared_params, fixed, batch, key, block_index, lr):
    params = {"block": block["params"]}
    if has_shared:
      params["shared"] = shared_params
    (loss, metrics), grads = gradients(params, fixed, batch, key, block_index)
    grads, grad_norm = steps.clip_by_global_norm(grads, clip_norm)
    new_block = steps.update_group(tx, block, grads["block"], lr)
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm)
    return new_block, grads.get("shared"), metrics

  def step(
    stacked, shared, fixed, batch, keys, block_ids, local_index, update_count
  ):
    learning_rate = learning_rate_fn(update_count * num_blocks)
    active = jax.tree.map(lambda x: x[:, local_index], stacked)
    new_active, shared_grads, metrics = jax.vmap(
      group_step, in_axes=(0, None, None, 0, 0, 0, None)
    )(
      active,
      shared.get("params") if has_shared else None,
      fixed,
      batch,
      keys,
      block_ids,
      learning_rate,
    )
    stacked = jax.tree.map(
      lambda x, y: x.at[:, local_index].set(y), stacked, new_active
    )
    if has_shared:
      mean = jax.tree.map(lambda g: jnp.mean(g, axis=0), shared_grads)
      shared = steps.update_group(tx, shared, mean, learning_rate)
    metrics["learning_rate"] = learning_rate
    return stacked, shared, metrics

  by_block = NamedSharding(mesh, P(BLOCK_AXIS))
  replicated = NamedSharding(mesh, P())
  return jax.jit(
    step,
    in_shardings=(
      by_block,
      replicated,
      replicated,
      batch_sharding(mesh),
      by_block,
      by_block,
      replicated,
      replicated,
    ),
    out_shardings=(by_block, replicated, None),
    donate_argnums=(0, 1),
  )


# ----- What the compiled program communicates --------------------------------

_COLLECTIVES = (
  "all-reduce",
  "all-gather",
  "reduce-scatter",
  "all-to-all",
  "collective-permute",
  "collective-broadcast",
)
_OP = re.compile(
  r"^\s*(?:ROOT\s+)?\S+\s*=.*?\s("
  + "|".join(_COLLECTIVES)
  + r")(?:-start)?\((.*)$",
  re.MULTILINE,
)


def _mesh_groups(attributes: str) -> list[list[int]] | None:
  """replica_groups=mesh['a'=4,'b'=2] {'b'}: the devices along 'b'."""
  found = re.search(
    r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attributes
  )
  if not found or "<=" in attributes[found.end() : found.end() + 2]:
    return None
  axes = re.findall(r"'([^']+)'=(\d+)", found[1])
  names = [name for name, _ in axes]
  sizes = [int(size) for _, size in axes]
  reduced = [names.index(a) for a in re.findall(r"'([^']+)'", found[2])]
  kept = [i for i in range(len(names)) if i not in reduced]
  ids = np.arange(int(np.prod(sizes))).reshape(sizes)
  size = int(np.prod([sizes[i] for i in reduced]))
  return ids.transpose(kept + reduced).reshape(-1, size).tolist()


def _replica_groups(attributes: str) -> list[list[int]] | None:
  """Device groups of one collective's HLO attributes (None: unknown)."""
  if "replica_groups=mesh[" in attributes:
    return _mesh_groups(attributes)
  iota = re.search(
    r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?",
    attributes,
  )
  if iota:
    groups, size = int(iota[1]), int(iota[2])
    dims = [int(d) for d in iota[3].split(",")]
    ids = np.arange(int(np.prod(dims))).reshape(dims)
    if iota[4]:
      ids = ids.transpose([int(d) for d in iota[4].split(",")])
    return ids.reshape(groups, size).tolist()
  listed = re.search(r"replica_groups=\{(\{[\d,{} ]*\})\}", attributes)
  if listed:
    return [
      [int(i) for i in g.split(",") if i.strip()]
      for g in re.findall(r"\{([\d, ]*)\}", listed[1])
    ]
  pairs = re.search(r"source_target_pairs=\{([\d,{} ]*)\}", attributes)
  if pairs:
    return [
      [int(i) for i in p.split(",")]
      for p in re.findall(r"\{(\d+,\d+)\}", pairs[1])
    ]
  return None


def collectives_across_groups(hlo_text: str, mesh) -> list[str]:
  """The collectives of a compiled SPMD program that join device groups.

  Partition i of the program runs on `mesh.devices.flat[i]`; a collective
  crosses the `block` axis when one of its replica groups (or a permute's
  source-target pair) holds partitions of two different groups. Groups in a
  notation this parser does not know count as all devices (crossing), so
  an unknown format fails a check rather than passing it.

  Returns:
    One line per crossing collective ("all-reduce: [[0, 2], ...]"); empty
    when the groups never communicate.
  """
  group_of = np.repeat(
    np.arange(mesh.devices.shape[0]), int(np.prod(mesh.devices.shape[1:]))
  )
  crossing = []
  for match in _OP.finditer(hlo_text):
    name, attributes = match[1], match[2]
    groups = _replica_groups(attributes)
    if not groups or groups == [[]]:
      groups = [list(range(len(group_of)))]
    if any(len({int(group_of[i]) for i in g}) > 1 for g in groups):
      crossing.append(f"{name}: {groups}")
  return crossing
