"""One process of a data-parallel run (tests/blockwise/test_distributed.py).

    python distributed_worker.py OUT PROCESS_ID NUM_PROCESSES DEVICES PORT

Trains the quickstart smoke ViT (block-wise, then its end-to-end baseline)
for a few steps on fixed global batches, this process feeding its rows of
each, and writes its own copy of the final state to OUT/state_<method>_<id>.npz.
"""

import os
import sys

import jax
import numpy as np

out, process_id, num_processes, devices, port = sys.argv[1:]
process_id, num_processes = int(process_id), int(num_processes)
jax.config.update("jax_num_cpu_devices", int(devices))
if num_processes > 1:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    f"localhost:{port}", num_processes=num_processes, process_id=process_id
  )

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
sys.path.insert(0, ROOT)
from configs import quickstart  # noqa: E402
from dblocks_jax import families  # noqa: E402
from dblocks_jax.families import common  # noqa: E402

GLOBAL_BATCH, STEPS = 16, 6


def local_copy(tree):
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


for method in ("dblocks", "e2e"):
  config = quickstart.get_config("smoke")
  config.method = method
  config.batch_size = GLOBAL_BATCH
  trainer = common.make_trainer(config, families.get("vit").build(config), None)
  assert trainer.layout.data_shards == jax.device_count()
  rng = np.random.default_rng(0)
  rows = GLOBAL_BATCH // num_processes
  for _ in range(STEPS):
    batch = {
      "image": rng.normal(size=(GLOBAL_BATCH, 8, 8, 1)).astype(np.float32),
      "label": rng.integers(0, 10, GLOBAL_BATCH).astype(np.int32),
    }
    mine = slice(process_id * rows, (process_id + 1) * rows)
    trainer.step({k: v[mine] for k, v in batch.items()})
  state = trainer.state
  groups = [state["shared"], *state["blocks"]]
  leaves = jax.tree.leaves(local_copy([g["params"] for g in groups if g]))
  np.savez(
    os.path.join(out, f"state_{method}_{process_id}.npz"),
    *leaves,
    step=trainer.step_count,
  )
