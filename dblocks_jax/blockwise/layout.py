"""Where a run's blocks live: a `block` x `data` device mesh.

A run trains the blocks `T` (all B by default; a subset for a per-block job)
on G device groups along the mesh's `block` axis, each of D devices along its
`data` axis. Group g owns the k = |T| / G blocks T[g k : (g + 1) k]. Inside a
group the batch is split along `data` and the gradients are reduced across
its devices (and the processes that hold them): data parallelism.

G = 1 is a plain data-parallel run: the mesh is 1 x D over every device of
every process, each block's state is replicated on it, and one block trains
at a time. With G > 1 the groups train G blocks at once; their states are
stacked along a leading `block` axis ([G, k, ...]), so each group's devices
hold only its own blocks.
"""

import dataclasses

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

BLOCK_AXIS = "block"
DATA_AXIS = "data"


@dataclasses.dataclass(frozen=True)
class Layout:
  """Which blocks a run trains and how they map onto device groups.

  Attributes:
    blocks: the blocks this run trains, in order (T).
    num_groups: G, device groups along the mesh's `block` axis.
    data_shards: D, devices per group along the `data` axis.
    num_blocks: B, the model's blocks (0 for an end-to-end network).
  """

  blocks: tuple[int, ...]
  num_groups: int
  data_shards: int
  num_blocks: int

  @classmethod
  def create(
    cls,
    num_blocks: int,
    *,
    train_blocks=(),
    num_groups: int = 1,
    data_shards: int = 0,
    num_devices: int | None = None,
    layers_per_block=(),
    sharing: str = "shared",
  ) -> "Layout":
    """Validates a layout against the model and the devices.

    Args:
      num_blocks: B (0 for a network trained end to end).
      train_blocks: the blocks to train (empty = all).
      num_groups: G device groups, each training its own blocks.
      data_shards: D devices per group (0 = all devices // G).
      num_devices: devices available (default: `jax.device_count()`).
      layers_per_block: the plan's layer counts (groups stack equal blocks).
      sharing: the model's sharing mode; `shared` needs every block in one
        run.
    """
    num_devices = jax.device_count() if num_devices is None else num_devices
    blocks = tuple(sorted(int(b) for b in train_blocks)) or tuple(
      range(num_blocks)
    )
    if any(not 0 <= b < num_blocks for b in blocks) or len(set(blocks)) != len(
      blocks
    ):
      raise ValueError(
        f"train_blocks={list(train_blocks)} must list distinct blocks in"
        f" [0, {num_blocks})."
      )
    if num_groups < 1:
      raise ValueError(f"block_groups={num_groups} must be at least 1.")
    if num_groups > 1 and not num_blocks:
      raise ValueError(
        f"block_groups={num_groups} splits the blocks of a block-wise run;"
        " an end-to-end network has none. Set block_groups=1."
      )
    if num_groups > num_devices:
      raise ValueError(
        f"block_groups={num_groups} needs at least {num_groups} devices; this"
        f" run sees {num_devices}. Lower block_groups or run one job per"
        " block (train_blocks=[b])."
      )
    if blocks and len(blocks) % num_groups:
      raise ValueError(
        f"the {len(blocks)} trained blocks (num_blocks={num_blocks},"
        f" train_blocks={list(train_blocks)}) are not divisible by"
        f" block_groups={num_groups}; choose a divisor."
      )
    if len(blocks) < num_blocks and sharing == "shared":
      raise ValueError(
        f"train_blocks={list(blocks)} trains some blocks in a separate job,"
        " but sharing='shared' trains the stem and readout with every block;"
        " jobs cannot share them. Set sharing='independent'."
      )
    sizes = {layers_per_block[b] for b in blocks} if layers_per_block else ()
    if num_groups > 1 and len(sizes) > 1:
      raise ValueError(
        "block-parallel training stacks the trained blocks, which needs"
        " equal layer counts; layer_distribution gives"
        f" {[layers_per_block[b] for b in blocks]}. Use an equal split or"
        " one job per block."
      )
    shards = int(data_shards) or num_devices // num_groups
    if shards < 1 or num_groups * shards > num_devices:
      raise ValueError(
        f"block_groups={num_groups} x data_shards={shards} needs"
        f" {num_groups * shards} devices; this run sees {num_devices}."
      )
    return cls(blocks, num_groups, shards, num_blocks)

  @property
  def blocks_per_group(self) -> int:
    return len(self.blocks) // self.num_groups

  @property
  def partial(self) -> bool:
    """A per-block job: some blocks are trained elsewhere."""
    return len(self.blocks) < self.num_blocks

  @property
  def stacked(self) -> bool:
    """Whether block states are stacked along the `block` axis (G > 1)."""
    return self.num_groups > 1

  def group_blocks(self, group: int) -> tuple[int, ...]:
    k = self.blocks_per_group
    return self.blocks[group * k : (group + 1) * k]

  def slot(self, block: int) -> tuple[int, int]:
    """(group, index within the group) of a trained block."""
    i = self.blocks.index(block)
    return divmod(i, self.blocks_per_group)


def make_mesh(layout: Layout) -> jax.sharding.Mesh:
  """The (block, data) mesh over the first G x D devices."""
  count = layout.num_groups * layout.data_shards
  return jax.make_mesh(
    (layout.num_groups, layout.data_shards),
    (BLOCK_AXIS, DATA_AXIS),
    axis_types=(AxisType.Auto, AxisType.Auto),
    devices=jax.devices()[:count],
  )


def replicated(mesh, memory_kind: str | None = None) -> NamedSharding:
  """Every device of `mesh` holds the whole array, in `memory_kind` (a
  kind of `device.addressable_memories()`; None = the default, device)."""
  return NamedSharding(mesh, P(), memory_kind=memory_kind)


def by_block(mesh) -> NamedSharding:
  """Leading axis along `block`: each group holds its own rows."""
  return NamedSharding(mesh, P(BLOCK_AXIS))


def batch_sharding(mesh, stacked: bool) -> NamedSharding:
  """[G, batch, ...] along (block, data) when stacked, else [batch, ...]
  along data."""
  return NamedSharding(
    mesh, P(BLOCK_AXIS, DATA_AXIS) if stacked else P(DATA_AXIS)
  )


def put_replicated(tree, mesh, memory_kind: str | None = None):
  """Host or device arrays -> global arrays replicated on `mesh`, in
  `memory_kind` (None = device memory; "pinned_host" for host offload)."""
  sharding = replicated(mesh, memory_kind)
  return jax.tree.map(lambda x: _global(np.asarray(x), sharding), tree)


def _global(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array from a value every process holds in full."""
  return jax.make_array_from_callback(
    value.shape, sharding, lambda index: value[index]
  )


def stack(block_states: dict, layout: Layout, mesh):
  """{block: state} -> one pytree [G, k, ...], sharded along `block`.

  Each process fills only the rows of the groups its devices hold, so a
  state the process does not hold may be missing from `block_states`.
  """
  shape = (layout.num_groups, layout.blocks_per_group)
  sharding = by_block(mesh)
  flat = {b: jax.tree.flatten(s) for b, s in block_states.items()}
  leaves0, treedef = next(iter(flat.values()))

  def leaf(i):
    def rows(index):
      group = index[0].start or 0
      blocks = layout.group_blocks(group)
      return np.stack([np.asarray(flat[b][0][i]) for b in blocks])[None]

    return jax.make_array_from_callback(
      (*shape, *np.shape(leaves0[i])), sharding, rows
    )

  return jax.tree.unflatten(treedef, [leaf(i) for i in range(len(leaves0))])


def unstack(stacked, mesh, layout: Layout) -> dict:
  """One pytree [G, k, ...] -> {block: state}, each block on its own
  group's devices (a group sub-mesh), with no communication. Every process
  gets every block; those of groups on other processes' devices hold no
  local data (as any global array in a multi-process run)."""
  out = {}
  for g in range(layout.num_groups):
    devices = mesh.devices[g].reshape(1, -1)
    sharding = NamedSharding(jax.sharding.Mesh(devices, mesh.axis_names), P())
    for j, block in enumerate(layout.group_blocks(g)):

      def take(x, g=g, j=j, sharding=sharding):
        pieces = [
          s.data[0, j]
          for s in x.addressable_shards
          if (s.index[0].start or 0) == g
        ]
        return jax.make_array_from_single_device_arrays(
          x.shape[2:], sharding, pieces, dtype=x.dtype
        )

      out[block] = jax.tree.map(take, stacked)
  return out


def unstack_to_host(stacked, layout: Layout) -> dict:
  """A host copy of [G, k, ...] (numpy) -> {block: state} (numpy)."""
  return {
    block: jax.tree.map(lambda x, g=g, j=j: np.asarray(x[g, j]), stacked)
    for g in range(layout.num_groups)
    for j, block in enumerate(layout.group_blocks(g))
  }


def local_rows(mesh, layout: Layout, batch_size: int) -> dict[int, tuple]:
  """{group: (first row, end row)} of the global batch rows this process
  feeds, for every group it holds devices of."""
  if not layout.stacked:
    shape, sharding = (batch_size,), batch_sharding(mesh, False)
  else:
    shape = (layout.num_groups, batch_size)
    sharding = batch_sharding(mesh, True)
  rows = {}
  for index in sharding.addressable_devices_indices_map(shape).values():
    group = (index[0].start or 0) if layout.stacked else 0
    piece = index[1] if layout.stacked else index[0]
    start, stop = piece.start or 0, piece.stop or batch_size
    lo, hi = rows.get(group, (start, stop))
    rows[group] = (min(lo, start), max(hi, stop))
  return rows


def global_batch(
  local: dict, rows: dict, mesh, layout: Layout, batch_size: int
):
  """Process-local batches -> one global batch on the mesh.

  Args:
    local: {group: batch dict of this process's rows of that group}.
    rows: `local_rows`.
    mesh: the mesh.
    layout: the layout.
    batch_size: the global batch size of one group.

  Returns:
    {name: [batch, ...]} (G = 1) or {name: [G, batch, ...]}.
  """
  sharding = batch_sharding(mesh, layout.stacked)
  example = next(iter(local.values()))
  groups = range(layout.num_groups) if layout.stacked else [0]
  if jax.process_count() == 1 and set(local) == set(groups):
    # One process holds every row: one transfer of the whole batch.
    if layout.stacked:
      whole = {n: np.stack([local[g][n] for g in groups]) for n in example}
    else:
      whole = {n: np.asarray(example[n]) for n in example}
    return jax.device_put(whole, sharding)

  def leaf(name):
    item = np.asarray(example[name])
    if layout.stacked:
      shape = (layout.num_groups, batch_size, *item.shape[1:])
    else:
      shape = (batch_size, *item.shape[1:])

    def rows_of(index):
      group = (index[0].start or 0) if layout.stacked else 0
      piece = index[1] if layout.stacked else index[0]
      lo = rows[group][0]
      start, stop = piece.start or 0, piece.stop or batch_size
      values = np.asarray(local[group][name])[start - lo : stop - lo]
      return values[None] if layout.stacked else values

    return jax.make_array_from_callback(shape, sharding, rows_of)

  return {name: leaf(name) for name in example}
