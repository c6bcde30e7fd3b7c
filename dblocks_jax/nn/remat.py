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

Every Linear runs on `nn.linear.matmul_p`, a primitive of its own that
lowers to one `dot_general` without batch dimensions; the named policies
are wrapped (`policy`) so that they see it as that `dot_general`, and keep
(or drop) the Linears' outputs as they keep the plain matmuls'.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from dblocks_jax.nn import linear

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


@dataclasses.dataclass(frozen=True)
class _SeesMatmulAsDot:
  """A `jax.checkpoint_policies` policy that is asked about
  `linear.matmul_p` as about the `dot_general` it lowers to: x [..., in]
  contracted with kernel [in, out], no batch dimensions, float32 out."""

  base: Any

  def __call__(self, prim, *avals, **params):
    if prim is linear.matmul_p:
      x = avals[0]
      params = dict(
        dimension_numbers=(((x.ndim - 1,), (0,)), ((), ())),
        precision=None,
        preferred_element_type=jnp.dtype(jnp.float32),
        out_sharding=None,
      )
      prim = jax.lax.dot_general_p
    return self.base(prim, *avals, **params)


def policy(name: str):
  """The `jax.checkpoint_policies` policy `name` (one of `POLICIES`), with
  every Linear's matmul counted as a `dot_general` without batch
  dimensions."""
  if name not in POLICIES:
    raise ValueError(f"{name!r} is not one of {POLICIES}.")
  return _SeesMatmulAsDot(getattr(jax.checkpoint_policies, name))


def checkpointed(fn, remat):
  """`fn` under `nnx.remat` with the policy `remat` names; `fn` itself for
  "none"."""
  name = remat_name(remat)
  if name == "none":
    return fn
  return nnx.remat(fn, policy=None if name == "full" else policy(name))
