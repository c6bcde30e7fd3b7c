"""Routed inference: a task's `predict` over the arrays of a trained model.

Each grid level is routed to one block, and that step merges and runs only
that block's parts (with the shared and fixed ones); the grid comes from the
`Sampler`, never from a checkpoint, so any number of steps works with any
model.
"""

import jax

from dblocks_jax.blockwise import parts as parts_lib


def inference_arrays(state) -> dict:
  """{"shared", "blocks", "fixed"} of a training state, without optimizer
  states: what inference reads ({"params", "rest"} per group)."""

  def strip(group):
    return {"params": group["params"], "rest": group["rest"]} if group else {}

  return {
    "shared": strip(state["shared"]),
    "blocks": [strip(b) for b in state["blocks"]],
    "fixed": state["fixed"],
  }


def parts_for_block_fn(graphdefs: parts_lib.GraphDefs, arrays):
  """block -> the modules it runs with (its own, shared and fixed parts), in
  evaluation mode."""

  def parts_for_block(b: int) -> dict:
    parts = {
      **parts_lib.merge(graphdefs.fixed, arrays["fixed"]),
      **(
        parts_lib.merge(graphdefs.shared, arrays["shared"])
        if arrays["shared"]
        else {}
      ),
    }
    if graphdefs.blocks:
      parts.update(parts_lib.merge(graphdefs.blocks[b], arrays["blocks"][b]))
    return parts

  return parts_for_block


def make_predict(task, graphdefs: parts_lib.GraphDefs, sampler=None):
  """A jitted `predict(arrays, batch, key) -> outputs` of `task.predict`.

  Args:
    task: the task.
    graphdefs: the model's definitions.
    sampler: a `Sampler` (the routed grid), or None for a task without
      noise.
  """

  def predict(arrays, batch, key):
    return task.predict(
      parts_for_block_fn(graphdefs, arrays), batch, key, sampler=sampler
    )

  return jax.jit(predict)
