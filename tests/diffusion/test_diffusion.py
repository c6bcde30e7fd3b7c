"""Tests of dblocks_jax.diffusion against method_spec 1.1-1.7."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from dblocks_jax import diffusion
from dblocks_jax.diffusion import samplers

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
P_MEAN, P_STD = -1.2, 1.2

# method_spec 1.4 (ascending, 4 significant digits).
SPEC_BOUNDARIES = {
  2: [0.002, 0.3012, 80.0],
  3: [0.002, 0.1796, 0.5050, 80.0],
  4: [0.002, 0.1341, 0.3012, 0.6766, 80.0],
  6: [0.002, 0.0943, 0.1796, 0.3012, 0.5050, 0.9617, 80.0],
}

# method_spec 1.1: sigma, c_skip, c_out, c_in, c_noise, w(sigma).
EDM_TABLE = np.array(
  [
    [0.002, 0.999984, 0.0020000, 1.99998, -1.55365, 250004.0],
    [0.1796, 0.88572, 0.169026, 1.88225, -0.429256, 35.0018],
    [0.3012, 0.733737, 0.258003, 1.71317, -0.299995, 15.0228],
    [0.505, 0.495025, 0.355308, 1.40716, -0.170799, 7.92118],
    [1.0, 0.2, 0.447214, 0.894427, 0.0, 5.0],
    [80.0, 3.906e-05, 0.49999, 0.0124998, 1.09551, 4.00016],
  ]
)


def _truncated_cdf(sigma, lo, hi):
  """CDF of the log-normal truncated to [lo, hi], in float64."""

  def phi(s):
    return special.ndtr((np.log(s) - P_MEAN) / P_STD)

  return (phi(sigma) - phi(lo)) / (phi(hi) - phi(lo))


_NUM_SAMPLES = 200_000
_SAMPLE_TRACES = []


@functools.partial(jax.jit, static_argnums=1)
def _sample_jit(key, shape, lo, hi):
  _SAMPLE_TRACES.append((shape, lo, hi))
  return diffusion.sample_truncated_lognormal(key, shape, lo, hi)


def _sample(key, shape, lo, hi):
  """One compilation per shape for every interval: lo and hi are traced."""
  return _sample_jit(key, shape, np.float32(lo), np.float32(hi))


def _assert_4_significant(actual, expected):
  np.testing.assert_allclose(actual, expected, rtol=5e-4)


# ---------------------------------------------------------------- partitions


@pytest.mark.parametrize("num_blocks", sorted(SPEC_BOUNDARIES))
def test_equiprobable_boundaries_match_spec(num_blocks):
  bounds = diffusion.block_boundaries(num_blocks)
  assert bounds.shape == (num_blocks + 1,)
  assert bounds.dtype == np.float64
  _assert_4_significant(bounds, SPEC_BOUNDARIES[num_blocks])
  assert bounds[0] == SIGMA_MIN and bounds[-1] == SIGMA_MAX
  assert np.all(np.diff(bounds) > 0)


@pytest.mark.parametrize("num_blocks", [1, 2, 3, 4, 6, 7])
def test_equiprobable_intervals_hold_equal_mass(num_blocks):
  bounds = diffusion.block_boundaries(num_blocks)
  q = np.array([diffusion.lognormal_cdf(s, P_MEAN, P_STD) for s in bounds])
  masses = np.diff(q) / (q[-1] - q[0])
  np.testing.assert_allclose(masses, 1.0 / num_blocks, rtol=1e-9)


def test_equiprobable_respects_custom_range_and_distribution():
  bounds = diffusion.block_boundaries(
    4, sigma_min=0.1, sigma_max=10.0, p_mean=0.0, p_std=1.0
  )
  assert bounds[0] == 0.1 and bounds[-1] == 10.0
  # Symmetric distribution and range around ln(sigma) = 0: the middle
  # boundary is the median, and the others are mirror images.
  np.testing.assert_allclose(bounds[2], 1.0, rtol=1e-12)
  np.testing.assert_allclose(bounds[1] * bounds[3], 1.0, rtol=1e-12)


def test_log_uniform_boundaries_have_equal_log_widths():
  bounds = diffusion.block_boundaries(5, kind="log_uniform")
  assert bounds[0] == SIGMA_MIN and bounds[-1] == SIGMA_MAX
  widths = np.diff(np.log(bounds))
  np.testing.assert_allclose(widths, np.log(SIGMA_MAX / SIGMA_MIN) / 5)


def test_explicit_boundaries_pass_through():
  explicit = (0.002, 0.05, 1.5, 80.0)
  bounds = diffusion.block_boundaries(3, kind="explicit", explicit=explicit)
  np.testing.assert_array_equal(bounds, explicit)
  assert bounds.dtype == np.float64


@pytest.mark.parametrize(
  ("kwargs", "field"),
  [
    (dict(sigma_min=80.0, sigma_max=80.0), "sigma_min"),
    (dict(sigma_min=1.0, sigma_max=0.5), "sigma_max"),
    (dict(sigma_min=0.0), "sigma_min"),
    (dict(num_blocks=0), "num_blocks"),
    (dict(kind="linear"), "partition"),
    (dict(kind="explicit", explicit=(0.002, 80.0)), "boundaries"),
    (dict(kind="explicit"), "boundaries"),
    (
      dict(kind="explicit", explicit=(0.002, 1.0, 0.5, 80.0)),
      "boundaries",
    ),
    (
      dict(kind="explicit", explicit=(0.01, 0.1, 1.0, 80.0)),
      "boundaries",
    ),
    (
      dict(kind="explicit", explicit=(0.002, 0.1, 1.0, 60.0)),
      "boundaries",
    ),
  ],
)
def test_block_boundaries_errors_name_the_argument(kwargs, field):
  kwargs = {"num_blocks": 3, **kwargs}
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    diffusion.block_boundaries(**kwargs)


def test_training_ranges_match_spec():
  ranges = diffusion.training_ranges(diffusion.block_boundaries(3), 0.05)
  _assert_4_significant(
    ranges, [[0.002, 0.2249], [0.1706, 0.5318], [0.3920, 80.0]]
  )
  ranges = diffusion.training_ranges(diffusion.block_boundaries(4), 0.1)
  _assert_4_significant(
    ranges,
    [[0.002, 0.2042], [0.1237, 0.3266], [0.2778, 0.7337], [0.4198, 80.0]],
  )


def test_training_ranges_widen_by_gamma_log_widths_and_clip():
  bounds = diffusion.block_boundaries(4)
  gamma = 0.2
  ranges = diffusion.training_ranges(bounds, gamma)
  assert ranges.shape == (4, 2)
  log_lo, log_hi = np.log(bounds[:-1]), np.log(bounds[1:])
  extend = gamma * (log_hi - log_lo)
  np.testing.assert_allclose(
    np.log(ranges[:, 0]), np.maximum(log_lo - extend, np.log(SIGMA_MIN))
  )
  np.testing.assert_allclose(
    np.log(ranges[:, 1]), np.minimum(log_hi + extend, np.log(SIGMA_MAX))
  )
  # Clipped at the two ends of the sigma range, never beyond.
  assert ranges[0, 0] == SIGMA_MIN and ranges[-1, 1] == SIGMA_MAX
  assert np.all(ranges >= SIGMA_MIN) and np.all(ranges <= SIGMA_MAX)
  # Neighbouring ranges now overlap; each contains its nominal interval.
  assert np.all(ranges[1:, 0] < ranges[:-1, 1])
  assert np.all(ranges[:, 0] <= bounds[:-1])
  assert np.all(ranges[:, 1] >= bounds[1:])


def test_training_ranges_gamma_zero_is_nominal():
  bounds = diffusion.block_boundaries(3)
  ranges = diffusion.training_ranges(bounds, 0.0)
  np.testing.assert_array_equal(ranges[:, 0], bounds[:-1])
  np.testing.assert_array_equal(ranges[:, 1], bounds[1:])


@pytest.mark.parametrize("gamma", [-0.01, 0.51, 1.0, float("nan")])
def test_training_ranges_reject_gamma_outside_range(gamma):
  with pytest.raises(ValueError, match=r"gamma="):
    diffusion.training_ranges(diffusion.block_boundaries(3), gamma)


# --------------------------------------------------------------------- noise


def test_lognormal_quantile_inverts_cdf():
  for q in (1e-5, 0.1, 0.5, 0.9, 1 - 1e-6):
    s = diffusion.lognormal_quantile(q, P_MEAN, P_STD)
    assert diffusion.lognormal_cdf(s, P_MEAN, P_STD) == pytest.approx(q)
  # The median of ln(sigma) is p_mean.
  median = diffusion.lognormal_cdf(math.exp(P_MEAN), P_MEAN, P_STD)
  assert median == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize(
  ("lo", "hi"),
  [(0.002, 0.2249), (0.1706, 0.5318), (0.392, 80.0), (0.002, 80.0)],
)
def test_truncated_lognormal_stays_in_range(lo, hi):
  sigma = _sample(jax.random.key(0), (_NUM_SAMPLES,), lo, hi)
  assert sigma.shape == (_NUM_SAMPLES,)
  assert sigma.dtype == jnp.float32
  sigma = np.asarray(sigma)
  assert np.all(np.isfinite(sigma))
  assert sigma.min() >= np.float32(lo) and sigma.max() <= np.float32(hi)


# B=3, gamma=0.05: ascending block j -> (fraction in the nominal interval).
_CORE_FRACTIONS = {0: 0.825, 1: 0.915, 2: 0.807}


@pytest.mark.parametrize("block", sorted(_CORE_FRACTIONS))
def test_truncated_lognormal_matches_distribution(block):
  bounds = diffusion.block_boundaries(3)
  lo, hi = diffusion.training_ranges(bounds, 0.05)[block]
  n = _NUM_SAMPLES
  sigma = _sample(jax.random.key(block), (n,), lo, hi)
  sigma = np.sort(np.asarray(sigma, np.float64))
  inside = np.mean((sigma >= bounds[block]) & (sigma < bounds[block + 1]))
  assert inside == pytest.approx(_CORE_FRACTIONS[block], abs=0.01)
  # The exact fraction agrees with the spec's rounded one, too.
  exact = _truncated_cdf(bounds[block + 1], lo, hi) - _truncated_cdf(
    bounds[block], lo, hi
  )
  assert exact == pytest.approx(_CORE_FRACTIONS[block], abs=0.0006)
  # Kolmogorov-Smirnov distance to the truncated log-normal.
  cdf = _truncated_cdf(sigma, lo, hi)
  steps = np.arange(1, n + 1) / n
  ks = max(np.max(steps - cdf), np.max(cdf - (steps - 1 / n)))
  assert ks < 0.01


def test_truncated_lognormal_traces_under_jit():
  ranges = diffusion.training_ranges(diffusion.block_boundaries(4), 0.1)
  for lo, hi in ranges:
    sigma = np.asarray(_sample(jax.random.key(7), (_NUM_SAMPLES,), lo, hi))
    assert sigma.min() >= np.float32(lo) and sigma.max() <= np.float32(hi)
    # Median of the samples is the median of the truncated distribution.
    median = np.median(sigma)
    assert _truncated_cdf(median, lo, hi) == pytest.approx(0.5, abs=0.01)
  # One trace served every interval (in every test): lo and hi were traced,
  # not baked in as constants.
  traces = [t for t in _SAMPLE_TRACES if t[0] == (_NUM_SAMPLES,)]
  assert len(traces) == 1
  assert all(isinstance(x, jax.core.Tracer) for x in traces[0][1:])


def test_truncated_lognormal_is_reproducible_per_key():
  shape = (_NUM_SAMPLES,)
  a = np.asarray(_sample(jax.random.key(3), shape, 0.1, 1.0))
  b = np.asarray(_sample(jax.random.key(3), shape, 0.1, 1.0))
  c = np.asarray(_sample(jax.random.key(4), shape, 0.1, 1.0))
  np.testing.assert_array_equal(a, b)
  assert np.mean(a == c) < 0.01
  assert np.all((a >= np.float32(0.1)) & (a <= 1.0))


def test_log_uniform_sampling_is_uniform_in_log_sigma():
  lo, hi = 0.392, 80.0
  sample = jax.jit(diffusion.sample_log_uniform, static_argnums=1)
  sigma = np.asarray(sample(jax.random.key(0), (_NUM_SAMPLES,), lo, hi))
  assert sigma.min() >= np.float32(lo) and sigma.max() <= np.float32(hi)
  u = np.sort((np.log(sigma) - np.log(lo)) / (np.log(hi) - np.log(lo)))
  steps = np.arange(1, len(u) + 1) / len(u)
  assert np.max(np.abs(steps - u)) < 0.01  # Kolmogorov-Smirnov to U(0, 1).
  # Half of block 0's samples lie above sigma = 5 (the log-normal: ~2%).
  expected = np.log(hi / 5.0) / np.log(hi / lo)
  assert np.mean(sigma > 5.0) == pytest.approx(expected, abs=0.01)


# ----------------------------------------------------------------------- EDM


def test_edm_coefficients_match_spec_table():
  sigma = EDM_TABLE[:, 0]
  np.testing.assert_allclose(diffusion.c_skip(sigma), EDM_TABLE[:, 1], 1e-4)
  np.testing.assert_allclose(diffusion.c_out(sigma), EDM_TABLE[:, 2], 1e-4)
  np.testing.assert_allclose(diffusion.c_in(sigma), EDM_TABLE[:, 3], 1e-4)
  np.testing.assert_allclose(
    diffusion.c_noise(sigma), EDM_TABLE[:, 4], rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(
    diffusion.loss_weight(sigma), EDM_TABLE[:, 5], 1e-4
  )


def test_edm_coefficients_in_float32_match_table():
  sigma = jnp.asarray(EDM_TABLE[:, 0], jnp.float32)
  for fn, column in (
    (diffusion.c_skip, 1),
    (diffusion.c_out, 2),
    (diffusion.c_in, 3),
    (diffusion.loss_weight, 5),
  ):
    value = fn(sigma)
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(value, EDM_TABLE[:, column], rtol=1e-4)


def test_edm_identities():
  sigma = np.geomspace(SIGMA_MIN, SIGMA_MAX, 41)
  for sigma_data in (0.5, 1.0):
    skip = diffusion.c_skip(sigma, sigma_data)
    out = diffusion.c_out(sigma, sigma_data)
    c_in = diffusion.c_in(sigma, sigma_data)
    weight = diffusion.loss_weight(sigma, sigma_data)
    # D = y exactly when z = y (sigma -> 0 limit is built in):
    # c_skip + c_out^2 / sigma_data^2 == 1.
    np.testing.assert_allclose(skip + out**2 / sigma_data**2, 1.0, 1e-6)
    # Unit-variance network input: c_in^2 (sigma_data^2 + sigma^2) == 1.
    np.testing.assert_allclose(c_in**2 * (sigma_data**2 + sigma**2), 1.0, 1e-6)
    # The EDM weight makes the effective target weight one: w c_out^2 == 1.
    np.testing.assert_allclose(weight * out**2, 1.0, 1e-6)


def test_loss_weight_clamp():
  sigma = np.array([0.002, 0.1, 1.0, 80.0])
  unclamped = diffusion.loss_weight(sigma)
  clamped = diffusion.loss_weight(sigma, max_weight=20.0)
  np.testing.assert_allclose(clamped, np.minimum(unclamped, 20.0))
  assert clamped[0] == 20.0 and clamped[2] == pytest.approx(5.0)
  np.testing.assert_array_equal(
    diffusion.loss_weight(sigma, max_weight=0.0), unclamped
  )


@pytest.mark.parametrize("shape", [(3, 5), (3, 4, 2, 6)])
def test_denoised_broadcasts_sigma_over_trailing_axes(shape):
  rng = np.random.default_rng(0)
  z = jnp.asarray(rng.normal(size=shape), jnp.float32)
  f = jnp.asarray(rng.normal(size=shape), jnp.float32)
  sigma = jnp.array([0.01, 0.5, 20.0], jnp.float32)
  out = diffusion.denoised(z, f, sigma)
  assert out.shape == shape
  for i in range(shape[0]):
    s = float(sigma[i])
    expected = diffusion.c_skip(s) * z[i] + diffusion.c_out(s) * f[i]
    np.testing.assert_allclose(out[i], expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------- grids


def test_cdf_grid_matches_spec():
  grid = diffusion.cdf_sigmas(50)
  assert grid.shape == (50,)
  _assert_4_significant(grid[:5], [80.0, 3.506, 2.434, 1.922, 1.605])
  _assert_4_significant(
    grid[-7:], [0.07462, 0.06562, 0.05653, 0.0472, 0.03728, 0.02588, 0.002]
  )
  assert np.all(np.diff(grid) < 0)
  # Equally spaced in the log-normal CDF.
  q = [diffusion.lognormal_cdf(s, P_MEAN, P_STD) for s in grid]
  np.testing.assert_allclose(np.diff(q), np.diff(q)[0], rtol=1e-6)


def test_cdf_grid_small_sizes():
  # One step starts where the sampler's noise is drawn: sigma_max.
  np.testing.assert_array_equal(diffusion.cdf_sigmas(1), [SIGMA_MAX])
  np.testing.assert_array_equal(diffusion.karras_sigmas(1), [SIGMA_MAX])
  np.testing.assert_array_equal(diffusion.cdf_sigmas(2), [SIGMA_MAX, SIGMA_MIN])
  # N = B + 1 lands on the interior partition boundaries.
  np.testing.assert_allclose(
    diffusion.cdf_sigmas(4), diffusion.block_boundaries(3)[::-1], rtol=1e-12
  )


def test_cdf_grid_with_narrow_noise_distribution():
  """Phi(ln sigma_max) rounds to 1 for a narrow p_std; ends stay exact."""
  p_std = 0.6
  assert diffusion.lognormal_cdf(SIGMA_MAX, P_MEAN, p_std) == 1.0
  # Training-side partition of the same config is fine.
  bounds = diffusion.block_boundaries(3, p_std=p_std)
  assert np.all(np.diff(bounds) > 0)
  grid = diffusion.cdf_sigmas(5, p_std=p_std)
  assert grid[0] == SIGMA_MAX and grid[-1] == SIGMA_MIN
  assert np.all(np.diff(grid) < 0)
  # N = B + 1 interior points are the partition boundaries, as for p_std 1.2.
  np.testing.assert_allclose(
    diffusion.cdf_sigmas(4, p_std=p_std), bounds[::-1], rtol=1e-9
  )


def test_karras_grid():
  grid = diffusion.karras_sigmas(18, rho=7.0)
  assert grid.shape == (18,)
  np.testing.assert_allclose(grid[[0, -1]], [SIGMA_MAX, SIGMA_MIN], 1e-12)
  assert np.all(np.diff(grid) < 0)
  # Equally spaced in sigma^(1/rho).
  root = grid ** (1 / 7.0)
  np.testing.assert_allclose(np.diff(root), np.diff(root)[0], rtol=1e-9)
  np.testing.assert_array_equal(diffusion.karras_sigmas(1), [SIGMA_MAX])


def test_sigma_grid_dispatch_and_errors():
  np.testing.assert_array_equal(
    diffusion.sigma_grid("cdf", 7), diffusion.cdf_sigmas(7)
  )
  np.testing.assert_array_equal(
    diffusion.sigma_grid("karras", 7, rho=3.0),
    diffusion.karras_sigmas(7, rho=3.0),
  )
  with pytest.raises(ValueError, match=r"grid="):
    diffusion.sigma_grid("linear", 7)
  with pytest.raises(ValueError, match=r"num_steps="):
    diffusion.sigma_grid("cdf", 0)
  with pytest.raises(ValueError, match=r"sigma_min="):
    diffusion.sigma_grid("karras", 5, sigma_min=1.0, sigma_max=1.0)


# ------------------------------------------------------------------- routing


def test_route_cdf_grid_three_steps_visits_each_block_once():
  bounds = diffusion.block_boundaries(3)
  np.testing.assert_array_equal(
    diffusion.route(diffusion.cdf_sigmas(3), bounds), [0, 1, 2]
  )


def test_route_cdf_grid_four_steps_lands_on_boundaries():
  # method_spec 1.7: the interior points are the partition boundaries, which
  # route to the noisier interval above them.
  bounds = diffusion.block_boundaries(3)
  np.testing.assert_array_equal(
    diffusion.route(diffusion.cdf_sigmas(4), bounds), [0, 0, 1, 2]
  )


def test_route_fifty_step_counts():
  bounds = diffusion.block_boundaries(3)
  cdf = diffusion.route(diffusion.cdf_sigmas(50), bounds)
  np.testing.assert_array_equal(np.bincount(cdf, minlength=3), [17, 16, 17])
  karras = diffusion.route(diffusion.karras_sigmas(50), bounds)
  np.testing.assert_array_equal(np.bincount(karras, minlength=3), [33, 4, 13])
  # A descending grid visits the blocks in order 0, 1, 2 (high noise first).
  for blocks in (cdf, karras):
    assert np.all(np.diff(blocks) >= 0)


def test_route_boundaries_and_clipping():
  bounds = diffusion.block_boundaries(3)
  # Official rule: bucket = searchsorted(right) - 1, clipped, reversed.
  # A boundary belongs to the ascending interval above it.
  np.testing.assert_array_equal(diffusion.route(bounds, bounds), [2, 1, 0, 0])
  for j in range(3):
    below = np.nextafter(bounds[j + 1], 0.0)
    assert diffusion.route(float(bounds[j]), bounds) == 2 - j
    assert diffusion.route(float(below), bounds) == 2 - j
  assert diffusion.route(1e-4, bounds) == 2
  assert diffusion.route(0.0, bounds) == 2
  assert diffusion.route(1e4, bounds) == 0
  np.testing.assert_array_equal(
    diffusion.route(np.array([[1e-5, 0.3], [1.0, 1e3]]), bounds),
    [[2, 1], [0, 0]],
  )


def test_route_on_numpy_scalars_and_ints():
  bounds = diffusion.block_boundaries(2)
  assert int(diffusion.route(np.float64(0.01), bounds)) == 1
  assert int(diffusion.route(np.float32(0.01), bounds)) == 1
  assert int(diffusion.route(5, bounds)) == 0


def test_route_agrees_with_official_rule_on_random_sigmas():
  bounds = diffusion.block_boundaries(4)
  rng = np.random.default_rng(0)
  sigma = np.exp(rng.uniform(np.log(1e-4), np.log(200.0), 1000))
  sigma = np.concatenate([sigma, bounds])
  official = 3 - np.clip(np.searchsorted(bounds, sigma, "right") - 1, 0, 3)
  np.testing.assert_array_equal(diffusion.route(sigma, bounds), official)
  for b in range(4):
    lo, hi = bounds[3 - b], bounds[4 - b]
    inside = (sigma >= lo) & (sigma < hi)
    assert np.all(official[inside] == b)


def test_route_traced_under_jit():
  bounds = diffusion.block_boundaries(3)
  grid = diffusion.cdf_sigmas(50)

  @jax.jit
  def routed(sigma):
    return diffusion.route(sigma, bounds)

  expected = diffusion.route(grid, bounds)
  traced = routed(jnp.asarray(grid, jnp.float32))
  assert traced.dtype in (jnp.int32, jnp.int64)
  np.testing.assert_array_equal(traced, expected)
  assert int(routed(jnp.float32(1e-5))) == 2
  assert int(routed(jnp.float32(1e5))) == 0


# ------------------------------------------------------------------ samplers


def test_euler_step_formula_and_contraction():
  rng = np.random.default_rng(0)
  z, d = rng.normal(size=(2, 16))
  for sigma, sigma_next in ((80.0, 3.5), (1.0, 0.9), (0.1, 0.002)):
    z_next = samplers.euler_step(z, d, sigma, sigma_next)
    ratio = sigma_next / sigma
    np.testing.assert_allclose(z_next, ratio * z + (1 - ratio) * d)
    # Toward D, elementwise, by exactly the factor sigma_next / sigma.
    assert np.all(np.abs(z_next - d) < np.abs(z - d))
    np.testing.assert_allclose(np.abs(z_next - d), ratio * np.abs(z - d))
  # A step to the same sigma is the identity.
  np.testing.assert_allclose(samplers.euler_step(z, d, 0.5, 0.5), z)


def _recording_denoiser(fn):
  calls = []

  def denoise(z, i):
    calls.append((i, np.array(z, copy=True)))
    return fn(z, i), i

  return denoise, calls


@pytest.mark.parametrize(
  "sigmas",
  [
    diffusion.cdf_sigmas(3),
    diffusion.cdf_sigmas(17),
    diffusion.karras_sigmas(9),
  ],
)
def test_euler_on_point_mass_reaches_target(sigmas):
  y = np.linspace(-1.0, 1.0, 8)
  z0 = SIGMA_MAX * np.random.default_rng(1).normal(size=8)
  denoise, calls = _recording_denoiser(lambda z, i: y)
  d, aux = diffusion.sample(denoise, z0, sigmas, "euler")
  np.testing.assert_allclose(d, y)
  n = len(sigmas)
  assert aux == n - 1
  assert [i for i, _ in calls] == list(range(n))
  z_last = calls[-1][1]
  np.testing.assert_allclose(
    z_last, y + (sigmas[-1] / sigmas[0]) * (z0 - y), rtol=1e-9, atol=1e-12
  )
  # Every intermediate state is on the same straight line.
  for i, z in calls:
    np.testing.assert_allclose(
      z, y + (sigmas[i] / sigmas[0]) * (z0 - y), rtol=1e-9, atol=1e-12
    )


def _gaussian_ode_error(method, sigmas, sigma_data=0.5):
  """|z(sigma_min) - exact| for data N(0, sigma_data^2), one dimension."""
  z0 = np.array([-3.0, 0.7, 120.0])

  def denoise(z, i):
    s = sigmas[i]
    return z * sigma_data**2 / (sigma_data**2 + s**2), None

  states = []

  def recording(z, i):
    states.append(z)
    return denoise(z, i)

  diffusion.sample(recording, z0, sigmas, method)
  exact = z0 * np.sqrt(
    (sigma_data**2 + sigmas[-1] ** 2) / (sigma_data**2 + sigmas[0] ** 2)
  )
  return np.max(np.abs(states[-1] - exact) / np.abs(exact))


def test_heun_is_more_accurate_than_euler_on_gaussian_data():
  # On the EDM (Karras) grid, Heun beats Euler at every size and converges at
  # second order (error / 4 per halving of the step) against Euler's first.
  errors = {
    n: (
      _gaussian_ode_error("euler", diffusion.karras_sigmas(n)),
      _gaussian_ode_error("heun", diffusion.karras_sigmas(n)),
    )
    for n in (10, 20, 40, 80)
  }
  for euler, heun in errors.values():
    assert heun < euler
  assert errors[20][1] < errors[20][0] / 3
  assert errors[80][1] < errors[80][0] / 10
  for n in (20, 40):
    euler_order = np.log2(errors[n][0] / errors[2 * n][0])
    heun_order = np.log2(errors[n][1] / errors[2 * n][1])
    assert euler_order == pytest.approx(1.0, abs=0.15)
    assert heun_order == pytest.approx(2.0, abs=0.25)


def test_euler_is_exact_where_the_data_looks_like_a_point():
  # For sigma >> sigma_data the Gaussian denoiser is ~0 and the exact flow is
  # z proportional to sigma, which Euler follows exactly: its error over the
  # first CDF-grid step (80 -> 3.5) is tiny, while Heun's is not. (Why Heun is
  # no better than Euler on the CDF grid, whose first step is a factor 23.)
  sigmas = diffusion.cdf_sigmas(50)[:2]
  euler = _gaussian_ode_error("euler", sigmas)
  heun = _gaussian_ode_error("heun", sigmas)
  assert euler < 0.02 < heun


@pytest.mark.parametrize("n", [1, 2, 5])
def test_denoiser_call_counts_and_indices(n):
  sigmas = diffusion.cdf_sigmas(n)
  denoise, calls = _recording_denoiser(lambda z, i: np.zeros_like(z))
  diffusion.sample(denoise, np.ones(3), sigmas, "euler")
  assert [i for i, _ in calls] == list(range(n))
  denoise, calls = _recording_denoiser(lambda z, i: np.zeros_like(z))
  diffusion.sample(denoise, np.ones(3), sigmas, "heun")
  assert len(calls) == 2 * (n - 1) + 1
  expected = [0] + [j for i in range(1, n) for j in (i, i)]
  assert [i for i, _ in calls] == expected


def test_heun_step_is_mean_of_slopes():
  z, d, d_next = np.array([2.0]), np.array([0.5]), np.array([0.25])
  sigma, sigma_next = 2.0, 1.0
  z_euler = samplers.euler_step(z, d, sigma, sigma_next)
  np.testing.assert_allclose(z_euler, [1.25])
  z_heun = samplers.heun_step(z, d, z_euler, d_next, sigma, sigma_next)
  # slopes (2 - 0.5) / 2 = 0.75 and (1.25 - 0.25) / 1 = 1.0; mean 0.875.
  np.testing.assert_allclose(z_heun, [2.0 - 0.875])


def test_sample_works_with_jax_arrays():
  y = jnp.array([0.3, -0.2])
  d, _ = diffusion.sample(
    lambda z, i: (y, None), jnp.array([10.0, -7.0]), diffusion.cdf_sigmas(4)
  )
  np.testing.assert_allclose(d, y)


def test_classifier_free_guidance():
  cond, uncond = np.array([1.0, -2.0, 3.0]), np.array([0.5, 0.5, 0.5])
  np.testing.assert_array_equal(
    diffusion.classifier_free_guidance(cond, uncond, 1.0), cond
  )
  np.testing.assert_array_equal(
    diffusion.classifier_free_guidance(cond, uncond, 0.0), uncond
  )
  np.testing.assert_allclose(
    diffusion.classifier_free_guidance(cond, uncond, 2.0),
    uncond + 2.0 * (cond - uncond),
  )


def test_sample_rejects_unknown_method():
  denoise, calls = _recording_denoiser(lambda z, i: z)
  with pytest.raises(ValueError, match=r"method="):
    diffusion.sample(denoise, np.zeros(2), diffusion.cdf_sigmas(3), "ddim")
  assert not calls


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_sample_routed_equals_the_unrolled_sampler(method):
  # A different affine denoiser per block; grid points routed 0 0 0 1 1 2.
  sigmas = diffusion.cdf_sigmas(6)
  blocks = [0, 0, 0, 1, 1, 2]
  scale = jnp.array([0.9, 0.5, 0.2])

  def routed(z, sigma, block):
    return scale[block] * z / (1 + sigma), sigma

  def unrolled(z, i):
    return routed(z, jnp.float32(sigmas[i]), blocks[i])

  z = jnp.array([10.0, -7.0, 3.0])
  expected, _ = diffusion.sample(unrolled, z, sigmas, method)
  got, last = diffusion.sample_routed(routed, z, sigmas, blocks, method)
  np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
  assert float(last) == pytest.approx(sigmas[-1])


def test_sample_routed_traces_each_run_once():
  # 32 steps of one block (tied weights) trace the denoiser twice: once for
  # the scanned body, once for the final evaluation; not 32 times.
  traces = []

  def denoise(z, sigma, block):
    traces.append(block)
    return jnp.tanh(z) * sigma, None

  sample = jax.jit(
    lambda z: diffusion.sample_routed(
      denoise, z, diffusion.cdf_sigmas(32), [0] * 32
    )[0]
  )
  sample(jnp.ones(4))
  assert traces == [0, 0]
  jaxpr = jax.make_jaxpr(sample)(jnp.ones(4))
  assert str(jaxpr).count("tanh") == 2  # One scanned body, one final call.
  with pytest.raises(ValueError, match="one entry per grid point"):
    diffusion.sample_routed(denoise, jnp.ones(4), [2.0, 1.0], [0])
