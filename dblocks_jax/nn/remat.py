"""Rematerialisation (jax.checkpoint) of a stack's layers, by policy name.

`remat` names what each layer keeps for the backward pass:
  none    no checkpoint: every intermediate the backward pass needs is kept;
  full    each layer under jax.checkpoint saving nothing: only its input is
          kept and its forward pass runs again in backward;
  or a policy of `jax.checkpoint_policies` that needs no arguments, e.g.
          dots_saveable (keep the matmul outputs, recompute the rest),
          dots_with_no_batch_dims_saveable (keep the matmuls without batch
          dimensions: the projections, not attention's q k^T and p v),
          nothing_saveable (as full), everything_saveable (as none).
Old configs hold booleans: True reads as "full", False as "none".
Rematerialisation never changes the values computed, only what is kept.
"""

import jax
from flax import nnx

POLICIES = tuple(
  name
  for name in (
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
    "nothing_saveable",
    "everything_saveable",
    "checkpoint_dots",
    "checkpoint_dots_with_no_batch_dims",
  )
  if hasattr(jax.checkpoint_policies, name)
)
CHOICES = ("none", "full", *POLICIES)


def remat_name(remat) -> str:
  """A checked policy name; the booleans of old configs become "full"
  (True) or "none" (False), as do the strings "True" and "False"."""
  if isinstance(remat, bool):
    return "full" if remat else "none"
  if isinstance(remat, str) and remat.lower() in ("true", "false"):
    return "full" if remat.lower() == "true" else "none"
  if remat not in CHOICES:
    raise ValueError(f"remat={remat!r} is unknown; choose one of {CHOICES}.")
  return remat


def checkpointed(fn, remat):
  """`fn` under `nnx.remat` with the policy `remat` names; `fn` itself for
  "none"."""
  name = remat_name(remat)
  if name == "none":
    return fn
  policy = None if name == "full" else getattr(jax.checkpoint_policies, name)
  return nnx.remat(fn, policy=policy)
