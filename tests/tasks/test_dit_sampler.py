"""DiT's routed sampler, scanned: equal to the unrolled sampler, and its
compiled size free of the number of steps.

`DiffusionGeneration.predict` runs each run of consecutive steps in one
block as one `lax.scan` (`diffusion.sample_routed`). The reference here is
the sampler it replaced: every grid point a Python step
(`diffusion.sample`), with guidance as two separate calls.
"""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from random_params import randomize_experiment

from configs import dit_fashion_mnist
from dblocks_jax import diffusion, families
from dblocks_jax.blockwise import inference
from dblocks_jax.blockwise import parts as parts_lib
from dblocks_jax.tasks import Sampler


@pytest.fixture(scope="module")
def dit():
  """(task, plan, graphdefs, arrays) of a smoke DiT (B = 3) with random
  parameters (a fresh DiT's zero head would make every sampler agree)."""
  config = dit_fashion_mnist.get_config("smoke")
  experiment = randomize_experiment(families.get("dit").build(config))
  graphdefs, shared, blocks, fixed = parts_lib.split(experiment.model)
  arrays = inference.inference_arrays(
    {"shared": shared, "blocks": blocks, "fixed": fixed}
  )
  return experiment.task, experiment.plan, graphdefs, arrays


def unrolled_predict(task, parts_for_block, batch, key, *, sampler):
  """The Python loop over grid points: one traced denoiser per evaluation,
  sigma a constant; guidance from two separate calls."""
  labels = batch["label"]
  size = labels.shape[0]
  z = float(sampler.levels[0]) * jax.random.normal(
    key, (size, *task.sample_shape)
  )
  null = jnp.full_like(labels, task.num_classes)

  def denoise(z, i):
    parts = parts_for_block(int(sampler.blocks[i]))
    sigma = jnp.full((size,), float(sampler.levels[i]), jnp.float32)

    def d(labels):
      return task.denoise(parts, z, sigma, labels, sigma_data=task.sigma_data)

    if task.guidance_scale == 1.0:
      return d(labels), None
    cond, uncond = d(labels), d(null)
    return uncond + task.guidance_scale * (cond - uncond), None

  return diffusion.sample(denoise, z, sampler.levels, sampler.method)[0]


def _jitted(predict, task, graphdefs, sampler):
  def run(arrays, batch, key):
    parts_for_block = inference.parts_for_block_fn(graphdefs, arrays)
    return predict(task, parts_for_block, batch, key, sampler=sampler)

  return jax.jit(run)


def _scanned(task, parts_for_block, batch, key, *, sampler):
  return task.predict(parts_for_block, batch, key, sampler=sampler)


def _with_guidance(task, scale):
  return dataclasses.replace(task, guidance_scale=scale)


@pytest.mark.parametrize(
  "method, guidance", [("euler", 1.0), ("euler", 2.0), ("heun", 2.0)]
)
def test_scanned_sampler_equals_the_unrolled_one(dit, method, guidance):
  task, plan, graphdefs, arrays = dit
  task = _with_guidance(task, guidance)
  sampler = Sampler.of(plan, 7, method=method)  # 7: not a multiple of B.
  assert sorted(set(sampler.blocks.tolist())) == [0, 1, 2]
  batch = {"label": jnp.array([0, 3, 9, 10])}  # 10: the null class.
  key = jax.random.key(4)
  got = _jitted(_scanned, task, graphdefs, sampler)(arrays, batch, key)
  expected = _jitted(unrolled_predict, task, graphdefs, sampler)(
    arrays, batch, key
  )
  assert got.shape == (4, *task.sample_shape)
  assert float(jnp.std(expected)) > 0.1  # Not a trivial sampler.
  # Float rounding only: sigma is traced in the scan, a constant when
  # unrolled (the random network amplifies it; 1.5e-5 of the scale at most).
  scale = float(jnp.max(jnp.abs(expected)))
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * scale)


def test_guidance_changes_the_scanned_samples(dit):
  task, plan, graphdefs, arrays = dit
  sampler = Sampler.of(plan, 5)
  batch = {"label": jnp.array([1, 2])}
  plain, guided = (
    _jitted(_scanned, _with_guidance(task, s), graphdefs, sampler)(
      arrays, batch, jax.random.key(0)
    )
    for s in (1.0, 3.0)
  )
  assert not np.allclose(plain, guided, atol=1e-3)


def test_ancestral_is_refused(dit):
  task, plan, graphdefs, arrays = dit
  sampler = Sampler.of(plan, 4, method="ancestral")
  with pytest.raises(ValueError, match="method="):
    _jitted(_scanned, task, graphdefs, sampler)(
      arrays, {"label": jnp.array([1])}, jax.random.key(0)
    )


def _runs(sampler) -> list:
  """The block (Euler) or pair of blocks (Heun) of each run of steps."""
  blocks = sampler.blocks.tolist()
  pairs = (
    zip(blocks[:-1], blocks[1:], strict=True)
    if sampler.method == "heun"
    else blocks[:-1]
  )
  return [key for key, _ in itertools.groupby(pairs)]


def _num_equations(jaxpr) -> int:
  """Equations of a jaxpr, those of its sub-jaxprs (scan bodies) included."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  count = 0
  for eqn in jaxpr.eqns:
    count += 1
    for value in eqn.params.values():
      for sub in value if isinstance(value, tuple) else (value,):
        if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
          count += _num_equations(sub)
  return count


@pytest.mark.parametrize("method, guidance", [("euler", 1.0), ("heun", 2.0)])
def test_compiled_size_is_free_of_the_number_of_steps(dit, method, guidance):
  # B = 3 blocks: 3 scanned bodies (Euler; Heun adds the 2 steps that
  # cross a boundary) and the final evaluation, whatever N.
  task, plan, graphdefs, arrays = dit
  task = _with_guidance(task, guidance)
  batch = {"label": jnp.array([1, 2])}
  sizes = {}
  for n in (9, 30):
    sampler = Sampler.of(plan, n, method=method)
    assert len(_runs(sampler)) == (3 if method == "euler" else 5)
    jaxpr = jax.make_jaxpr(_jitted(_scanned, task, graphdefs, sampler))(
      arrays, batch, jax.random.key(0)
    )
    inner = jaxpr.eqns[0].params["jaxpr"]
    scans = [e for e in inner.eqns if e.primitive.name == "scan"]
    assert len(scans) == len(_runs(sampler))
    assert sum(e.params["length"] for e in scans) == n - 1
    sizes[n] = _num_equations(inner)
  assert sizes[9] == sizes[30]


def test_each_run_traces_its_block_once(dit):
  task, plan, graphdefs, arrays = dit
  calls = []
  parts_for_block = inference.parts_for_block_fn(graphdefs, arrays)

  def recording(b):
    calls.append(b)
    return parts_for_block(b)

  for method in ("euler", "heun"):
    sampler = Sampler.of(plan, 12, method=method)
    calls.clear()
    jax.make_jaxpr(
      lambda key, s=sampler: task.predict(
        recording, {"label": jnp.array([1])}, key, sampler=s
      )
    )(jax.random.key(0))
    runs = _runs(sampler)
    flat = [b for r in runs for b in (r if method == "heun" else (r,))]
    assert calls == flat + [int(sampler.blocks[-1])], method
