"""A run's topology: what a resumed run, an evaluation or an assembly must
agree on (blocks, layers, boundaries, sharing; the layout of a job)."""

from dblocks_jax.errors import TopologyError

# Fields of how a run was laid out on devices and jobs, not of its model.
JOB_FIELDS = ("trained_blocks", "block_groups")


def check_topology(workdir, topology: dict, recorded: dict | None) -> None:
  """Refuses to resume a run whose topology differs from this one."""
  if recorded is None or recorded == topology:
    return
  changed = [
    f"{k}: {recorded.get(k)} -> {topology.get(k)}"
    for k in sorted(set(recorded) | set(topology))
    if recorded.get(k) != topology.get(k)
  ]
  raise TopologyError(
    f"workdir {workdir} holds a run with a different topology"
    f" ({'; '.join(changed)}); use a new --workdir or the run's settings."
  )


def layout_topology(plan, layout, sharing: str) -> dict:
  """The topology fields of a run's plan (blocks, layers, boundaries,
  sharing) and of its job's layout (trained blocks, block groups)."""
  topology = {}
  if plan is not None:
    topology.update(plan.topology())
    topology["sharing"] = sharing
  if layout.partial:
    topology["trained_blocks"] = list(layout.blocks)
  if layout.num_groups > 1:
    topology["block_groups"] = layout.num_groups
  return topology
