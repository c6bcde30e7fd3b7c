"""Which collectives of a compiled SPMD program join device groups.

`collectives_across_groups(hlo_text, mesh)` reads the HLO of a compiled mesh
step and lists every collective whose replica groups (or a permute's
source-target pairs) hold devices of two different groups along the mesh's
first (`block`) axis: in the `independent` sharing mode a block-parallel step
must have none.
"""

import re

import numpy as np

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
