"""Where a run's state lives: on the block x data mesh, and (offload) in
host memory for the blocks not being trained.

The devices form a `block` x `data` mesh of G groups of D devices
(`blockwise.layout`). G = 1 trains one block at a time on every device, with
the batch split along `data` and the state replicated; G > 1 trains G blocks
at once, each group's blocks stacked in one array along `block`.

Offload. The parameters and optimizer states of the held blocks that are not
being trained live in host memory (the memory kind `pinned_host`, or
`unpinned_host` on a backend without it): before the step of block b, b's
state is copied to device memory; it stays there while the schedule keeps
drawing b and goes back to host memory when another block is drawn (a
repeated block moves no bytes). The device holds one block's state, the
shared parts and the fixed parts instead of every block's. The moves change
no value: a run with offload is bit-identical to one without, and
checkpoints read and write the arrays wherever they are. Inference
(`inference_arrays`) copies every block's parameters (not its optimizer
state) to the device for its duration. On the CPU backend the host memory
kinds and `device` are the same RAM: the placement runs as on an accelerator
and saves nothing. With G > 1 a group's blocks are stacked in one array that
its step reads whole, so offload needs one block per group (and then moves
nothing).
"""

import jax
import numpy as np
from absl import logging

from dblocks_jax.blockwise import inference
from dblocks_jax.blockwise import layout as layout_lib
from dblocks_jax.training.streams import stream_seed

# Where offload keeps the blocks not being trained, in order of preference
# (pinned memory is what accelerators copy from asynchronously).
HOST_MEMORY_KINDS = ("pinned_host", "unpinned_host")


def host_memory_kind(device) -> str | None:
  """The memory kind offload keeps blocks in on `device`: the first of
  `HOST_MEMORY_KINDS` it exposes (None: none). XLA:CPU exposes `device`,
  `pinned_host` and `unpinned_host`, all the same RAM."""
  kinds = {m.kind for m in device.addressable_memories()}
  return next((k for k in HOST_MEMORY_KINDS if k in kinds), None)


def fetch(tree):
  """Host copies of `tree`, whichever processes' devices hold it (every
  process gets all groups' values)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils

  return multihost_utils.process_allgather(tree, tiled=True)


class Placement:
  """The run's state on its mesh, and the offload moves.

  `state` is {"step", "updates" [B], "shared", "blocks": [group or {} (not
  held)], "fixed"}; with G > 1 the held blocks live in `stacked` instead
  (`state["blocks"]` then holds {}), and `view()` gives every block as its
  own group.

  Args:
    layout: the run's layout.
    offload: keep the held blocks not being trained in host memory.
    blockwise: whether the network has blocks (offload needs them).
  """

  def __init__(self, layout: layout_lib.Layout, *, offload: bool, blockwise):
    self.layout = layout
    self.mesh = layout_lib.make_mesh(layout)
    self.host_kind = self._host_memory_kind(blockwise) if offload else None
    # With G > 1 (one block per group) every held block trains at each step.
    self.offload = bool(offload) and not layout.stacked
    if offload and not self.offload:
      logging.info("offload: one block per group, nothing to move.")
    self.resident: int | None = None  # The block in device memory.
    self.state: dict = {}
    self.stacked = None

  def _host_memory_kind(self, blockwise: bool) -> str:
    """The host memory kind offload uses, or a one-line error saying why
    offload cannot apply to this run."""
    layout = self.layout
    if not blockwise:
      raise ValueError(
        "offload=True keeps the blocks not being trained in host memory;"
        " an end-to-end network has no blocks. Set offload=False."
      )
    if layout.stacked and layout.blocks_per_group > 1:
      raise ValueError(
        f"offload=True cannot apply to block_groups={layout.num_groups}:"
        f" each group's {layout.blocks_per_group} blocks are stacked in one"
        " array that its step reads whole; use one block per group"
        f" (block_groups={len(layout.blocks)}), one job per block"
        " (train_blocks=(b,)), or offload=False."
      )
    device = self.mesh.devices.flat[0]
    kind = host_memory_kind(device)
    if kind is None:
      kinds = [m.kind for m in device.addressable_memories()]
      raise ValueError(
        f"offload=True needs host memory ({' or '.join(HOST_MEMORY_KINDS)}),"
        f" but the {device.platform} device exposes only {kinds}; set"
        " offload=False."
      )
    return kind

  def memory_kind(self, block: int) -> str | None:
    """The memory kind where a held block's state is placed: the host kind
    (offload, every block but the resident one) or None (device memory)."""
    if not self.offload or block == self.resident:
      return None
    return self.host_kind

  def place(self, state: dict) -> None:
    """Takes `state` as the run's: shared, fixed and (G = 1) blocks
    replicated on the mesh; G > 1 blocks stacked along `block`. With
    offload, every block goes to host memory until it trains."""
    mesh = self.mesh
    self.resident = None
    state = dict(state, blocks=list(state["blocks"]))
    state["step"] = np.asarray(state["step"], np.int32)
    state["updates"] = np.asarray(state["updates"], np.int32)
    state["shared"] = layout_lib.put_replicated(state["shared"], mesh)
    state["fixed"] = layout_lib.put_replicated(state["fixed"], mesh)
    if self.layout.stacked:
      held = {b: state["blocks"][b] for b in self.layout.blocks}
      self.stacked = layout_lib.stack(held, self.layout, mesh)
      state["blocks"] = [{} for _ in state["blocks"]]
    else:
      state["blocks"] = [
        layout_lib.put_replicated(b, mesh, self.memory_kind(i)) if b else {}
        for i, b in enumerate(state["blocks"])
      ]
    self.state = state

  def activate(self, block: int) -> None:
    """Offload: moves the resident block back to host memory and `block`
    into device memory (nothing when `block` is already resident or
    offload is off)."""
    if not self.offload or block == self.resident:
      return
    blocks, mesh = self.state["blocks"], self.mesh
    previous, self.resident = self.resident, block
    if previous is not None:
      # Out first, then in: the old block's device buffers are released
      # (freed once copied) before the new block's are requested.
      host = layout_lib.replicated(mesh, self.host_kind)
      blocks[previous] = jax.device_put(blocks[previous], host)
    blocks[block] = jax.device_put(blocks[block], layout_lib.replicated(mesh))

  def view(self) -> dict:
    """The state with every block as its own group. With G > 1 each block
    is an array on its own group's devices; in a multi-process run (where
    a group's arrays are not global arrays that every process can save)
    the blocks are gathered to host memory."""
    state = dict(self.state)
    if self.layout.stacked:
      blocks = list(state["blocks"])
      if jax.process_count() == 1:
        held = layout_lib.unstack(self.stacked, self.mesh, self.layout)
      else:
        held = layout_lib.unstack_to_host(fetch(self.stacked), self.layout)
      for b, group in held.items():
        blocks[b] = group
      state["blocks"] = blocks
    return state

  def restore_target(self) -> dict:
    """The state's structure, each array where it will be restored."""
    state = self.view()
    if self.layout.stacked:
      state = jax.device_get(state)  # Stacked again by `place`.
    return state

  def inference_arrays(self) -> dict:
    """What inference reads: {"shared", "blocks", "fixed"} of {"params",
    "rest"} (blocks of a G > 1 run are gathered to this process; with
    offload, every block is copied to device memory)."""
    arrays = inference.inference_arrays(self.view())
    if self.layout.stacked:
      arrays = jax.device_get(arrays)
    elif self.offload:  # Device copies of the host blocks' parameters.
      arrays = jax.device_put(arrays, layout_lib.replicated(self.mesh))
    return arrays

  def stream_specs(self, batch_size: int, seed: int, per_block: bool):
    """{stream: (seed, local batch size, (shard index, shard count))} of
    the data streams this process feeds; see `Trainer.stream_specs`."""
    rows = layout_lib.local_rows(self.mesh, self.layout, batch_size)
    specs = {}
    for group, (lo, hi) in rows.items():
      devices = self.mesh.devices[group].flat
      processes = sorted({d.process_index for d in devices})
      shard = (processes.index(jax.process_index()), len(processes))
      if not per_block:
        specs[None] = (seed, hi - lo, shard)
        continue
      for block in self.layout.group_blocks(group):
        specs[block] = (stream_seed(seed, block), hi - lo, shard)
    return specs

  def global_batch(self, local: dict):
    """{group: this process's rows of its batch} -> one global batch."""
    group, batch = next(iter(local.items()))
    devices = self.mesh.devices[group].flat
    feeding = len({d.process_index for d in devices})
    size = len(jax.tree.leaves(batch)[0]) * feeding
    data_shards = self.layout.data_shards
    if size % data_shards:
      raise ValueError(
        f"the batch of {size} examples does not split over the"
        f" {data_shards} devices of the data axis; use a multiple of"
        f" {data_shards}."
      )
    rows = layout_lib.local_rows(self.mesh, self.layout, size)
    return layout_lib.global_batch(local, rows, self.mesh, self.layout, size)
