"""`train_parallel(config, workdir)`: the block-parallel trainer.

`train.train_and_evaluate` hands over to it when `parallel.block_groups > 1`
or `blocks.train` names some of the blocks (a per-block job). The update
rule (keys, learning rates and data per block update) is that of
`blockwise.parallel`; this module runs it: workdir and config -> layout and
mesh -> state of the job's blocks only -> one data stream per block -> mesh
steps -> logs, NaN check, checkpoints -> evaluation of a complete model.

The workdir is a run like any other (`config.json`, `metrics.jsonl`,
`checkpoints/`, `eval.json`), and the checkpoint holds the sequential
trainer's state: blocks the job does not train are empty, and the data
position of every block's stream is saved. A complete run (every block)
evaluates at the end; a per-block job's checkpoints are merged by
`--mode=assemble` (`dblocks_jax.assemble`) before evaluation.
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dblocks_jax import checkpoint, data, experiment, metrics, train
from dblocks_jax.blockwise import optim, parallel
from dblocks_jax.errors import NonFiniteLossError
from dblocks_jax.state import check_topology, init_state


class BlockStreams:
  """The data streams of the blocks this process feeds, saved together.

  Block b's stream is the train pipeline seeded by `parallel.stream_seed`,
  whichever job or mesh trains b. Implements the iterator protocol of grain's
  checkpoint handler (`get_state` / `set_state` as bytes).
  """

  def __init__(self, iterators: dict):
    self.iterators = iterators

  def next(self, block: int) -> dict:
    return next(self.iterators[block])

  def get_state(self) -> bytes:
    states = {str(b): it.get_state() for b, it in self.iterators.items()}
    return json.dumps(states).encode()

  def set_state(self, state: bytes) -> None:
    for block, value in json.loads(state).items():
      self.iterators[int(block)].set_state(value)

  def start_prefetch(self) -> None:
    """Nothing to start: the pipelines read on demand."""


def _local_rows(mesh, layout: parallel.Layout, batch_size: int) -> dict:
  """{group: (first row, end row)} of the batch rows this process holds."""
  shape = (layout.num_groups, batch_size)
  rows = {}
  index_map = parallel.batch_sharding(mesh).addressable_devices_indices_map(
    shape
  )
  for index in index_map.values():
    group = index[0].start or 0
    start, stop = index[1].start or 0, index[1].stop or batch_size
    lo, hi = rows.get(group, (start, stop))
    rows[group] = (min(lo, start), max(hi, stop))
  return rows


def _make_streams(config, mesh, layout, rows) -> BlockStreams:
  """One stream per block of the groups this process holds."""
  iterators = {}
  for group, (lo, hi) in rows.items():
    processes = sorted({d.process_index for d in mesh.devices[group].flat})
    shard = (processes.index(jax.process_index()), len(processes))
    for block in layout.group_blocks(group):
      iterators[block] = data.make_train_iterator(
        config.data,
        batch_size=hi - lo,
        seed=parallel.stream_seed(config.seed, block),
        shard=shard,
      )
  return BlockStreams(iterators)


def _global_batch(streams, blocks_now, rows, sharding, batch_size):
  """[G, batch, ...] arrays: group g's rows from block blocks_now[g]."""
  local = {g: streams.next(blocks_now[g]) for g in rows}
  example = next(iter(local.values()))

  def leaf(name):
    shape = (len(blocks_now), batch_size, *example[name].shape[1:])

    def rows_of(index):
      group = index[0].start or 0
      lo = rows[group][0]
      start, stop = index[1].start or 0, index[1].stop or batch_size
      return local[group][name][start - lo : stop - lo][None]

    return jax.make_array_from_callback(shape, sharding, rows_of)

  return {name: leaf(name) for name in example}


def _unstack_in_place(stacked, mesh, layout: parallel.Layout) -> dict:
  """{block: state} on its own group's devices, with no communication."""
  out = {}
  for g in range(layout.num_groups):
    devices = mesh.devices[g].reshape(1, -1)
    group_mesh = jax.sharding.Mesh(devices, mesh.axis_names)
    sharding = NamedSharding(group_mesh, P())
    for j, block in enumerate(layout.group_blocks(g)):

      def take(x, g=g, j=j, sharding=sharding):
        pieces = [
          s.data[0, j]
          for s in x.addressable_shards
          if (s.index[0].start or 0) == g
        ]
        return jax.make_array_from_single_device_arrays(
          x.shape[2:], sharding, pieces
        )

      out[block] = jax.tree.map(take, stacked)
  return out


def train_parallel(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains the blocks of `config` on a device mesh; returns the result."""
  # ----- Workdir, config, layout ------------------------------------------
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  exp = experiment.build(config)
  layout = parallel.layout_from_config(
    config, exp.plan.layers_per_block, jax.device_count()
  )
  topology = exp.topology(config)
  train.check_data(config, data.dataset_info(config.data))
  train.write_config(workdir, config, topology)
  mesh = parallel.make_mesh(layout)
  num_groups, blocks_per_group = layout.num_groups, layout.blocks_per_group
  logging.info("Topology: %s", topology)
  logging.info(
    "Block-parallel: blocks %s on %d group(s) x %d data shard(s);"
    " %d block(s) per group.",
    list(layout.blocks),
    num_groups,
    layout.data_shards,
    blocks_per_group,
  )

  # ----- State of this job's blocks, data streams, restore ------------------
  tx = optim.make_optimizer(config.optimizer)
  graphdefs, state = init_state(exp, tx, blocks=layout.blocks)
  rows = _local_rows(mesh, layout, config.batch_size)
  streams = _make_streams(config, mesh, layout, rows)
  ckpt = checkpoint.Checkpointer(
    os.path.join(workdir, "checkpoints"),
    max_to_keep=config.keep_checkpoints,
    save_interval_steps=config.checkpoint_every_steps,
  )
  if ckpt.latest_step() is not None:
    check_topology(workdir, topology, ckpt.read_metadata().get("topology"))
    state, _ = ckpt.restore(state, data_iterator=streams)
    logging.info("Resumed from step %d.", int(state["step"]))
  start = int(state["step"]) // num_groups
  stacked = parallel.stack(
    {b: state["blocks"][b] for b in layout.blocks}, layout, mesh
  )
  shared = parallel.replicate(state["shared"], mesh)
  fixed = parallel.replicate(state["fixed"], mesh)
  del state  # The stacked copy is the only one from here on.

  # ----- Step ---------------------------------------------------------------
  step_fn = parallel.build_parallel_step(
    train.make_loss(exp, graphdefs, config, layout.blocks[0]),
    tx,
    optim.learning_rate_fn(config.optimizer, config.total_steps),
    mesh,
    num_blocks=layout.num_blocks,
    clip_norm=config.optimizer.clip_norm,
    accumulation_steps=config.accumulation_steps,
    has_shared=bool(jax.tree.leaves(shared)),
  )
  evaluate = None
  if not layout.partial:
    evaluate = train.make_evaluator(exp, graphdefs, config, workdir)

  def full_state(mesh_steps: int) -> dict:
    blocks = _unstack_in_place(stacked, mesh, layout)
    return {
      "step": jnp.asarray(layout.block_updates(mesh_steps), jnp.int32),
      "shared": shared,
      "blocks": [blocks.get(b, {}) for b in range(layout.num_blocks)],
      "fixed": fixed,
    }

  # ----- Loop ----------------------------------------------------------------
  total = layout.mesh_steps(config.total_steps)
  writer = metrics.MetricWriter(workdir, tensorboard=config.tensorboard)
  progress = metrics.Progress(
    layout.block_updates(total), layout.block_updates(start)
  )
  train_key = jax.random.key(config.seed)
  batch_sharding = parallel.batch_sharding(mesh)
  window = []

  def flush_window(done: int) -> None:
    nonlocal window
    fetched = []
    for step, blocks_now, values in window:
      values = jax.device_get(values)
      rate = float(values.pop("learning_rate"))
      for g, block in enumerate(blocks_now):
        per_group = {k: float(v[g]) for k, v in values.items()}
        fetched.append((step, block, dict(per_group, learning_rate=rate)))
    window = []
    bad = train.first_non_finite(fetched)
    if bad is not None:
      writer.flush()
      raise NonFiniteLossError(
        f"non-finite loss at step {bad[0]} (block {bad[1]}); the last"
        f" checkpoint (step {ckpt.latest_step()}) is intact. Lower"
        " optimizer.learning_rate or set diffusion.max_weight."
      )
    if fetched:
      scalars = train.summarise(fetched, blockwise=True)
      scalars.update(progress.update(done))
      writer.write_scalars(done, scalars)
      logging.info("%s loss %.4f", progress.describe(done), scalars["loss"])

  def crossed(done: int, every: int) -> bool:
    return every > 0 and done // every > (done - num_groups) // every

  try:
    for m in range(start, total):
      blocks_now = layout.blocks_at(m)
      n = layout.update_count(m)
      batch = _global_batch(
        streams, blocks_now, rows, batch_sharding, config.batch_size
      )
      keys = jnp.stack(
        [parallel.update_key(train_key, b, n) for b in blocks_now]
      )
      stacked, shared, step_metrics = step_fn(
        stacked,
        shared,
        fixed,
        batch,
        keys,
        jnp.asarray(blocks_now, jnp.int32),
        m % blocks_per_group,
        n,
      )
      done = layout.block_updates(m + 1)
      window.append((done, blocks_now, step_metrics))
      if m == start:
        logging.info("Compiled and ran the first mesh step.")
      last = m + 1 == total
      if crossed(done, config.log_every_steps) or last:
        flush_window(done)
      if crossed(done, config.checkpoint_every_steps) or last:
        flush_window(done)
        with progress.paused():
          ckpt.save(
            done,
            full_state(m + 1),
            data_iterator=streams,
            metadata={"topology": topology},
            force=True,
          )
  finally:
    ckpt.wait_until_finished()
    writer.flush()

  # ----- Final evaluation (a complete model) -------------------------------
  done = layout.block_updates(total)
  result = {
    "step": done,
    "method": exp.method,
    "blocks": list(layout.blocks),
    "complete": not layout.partial,
  }
  if evaluate is not None and jax.process_count() == 1:
    result.update(evaluate(jax.device_get(full_state(total))))
    writer.write_scalars(done, train.numeric(result))
    writer.write_json("eval.json", result)
  writer.close()
  ckpt.close()
  logging.info("Final: %s", result)
  return result
