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
`recomputed` is the finer tool: one function whose backward pass keeps its
inputs only and recomputes it once its cotangent has arrived (the Llama
layers' `lean_backward`, `nn.llama`).

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


def recomputed(fn):
  """`fn` with a VJP that keeps only its inputs and recomputes `fn` in the
  backward pass: what its intermediates would cost the backward pass is
  one transient recomputation instead.

  Unlike `jax.checkpoint`, the recomputation is tied to the incoming
  cotangent, so that XLA can neither hoist it to before the cotangent
  exists nor merge it with the forward pass's identical computation (either
  would keep its outputs live as long as saved values): the backward rule
  passes the saved inputs and the cotangent through one
  `jax.lax.optimization_barrier`, and, since XLA:CPU drops such barriers
  before scheduling, also adds to every floating input a zero computed
  from the cotangent (`_zero_of`). The values (forward and gradients) are
  `fn`'s own; reverse mode only (a `jax.custom_vjp`).

  fn: positional array arguments (pytrees, e.g. None) -> any pytree.
  """

  @jax.custom_vjp
  def call(*args):
    return fn(*args)

  def forward(*args):
    return fn(*args), args

  def backward(args, cotangent):
    args, cotangent = jax.lax.optimization_barrier((args, cotangent))
    zero = _zero_of(cotangent)
    args = jax.tree.map(lambda a: _plus(a, zero), args)
    _, vjp = jax.vjp(fn, *args)
    return vjp(cotangent)

  call.defvjp(forward, backward)
  return call


def _zero_of(tree) -> jax.Array:
  """A float32 scalar 0 that depends on the first element of tree's first
  leaf: min(|x|, 0), which XLA does not fold (NaN only where x is NaN, and
  then the gradients that depend on x are NaN anyway)."""
  leaf = jax.tree.leaves(tree)[0]
  first = jnp.ravel(leaf)[0].astype(jnp.float32)
  return jnp.minimum(jnp.abs(first), 0.0)


def _plus(a, zero):
  """a + zero for floating a (the same values), a itself otherwise."""
  if not jnp.issubdtype(a.dtype, jnp.floating):
    return a
  return a + zero.astype(a.dtype)
