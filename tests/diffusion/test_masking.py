"""The masking process of masked diffusion: schedules, partition, routing."""

import jax
import numpy as np
import pytest

from dblocks_jax.diffusion import masking
from dblocks_jax.diffusion.process import NoiseProcess


@pytest.mark.parametrize("schedule", masking.SCHEDULES)
def test_schedule_functions_agree(schedule):
  t = np.linspace(0.01, 0.99, 99)
  a = masking.alpha(t, schedule)
  assert np.all(np.diff(a) < 0) and a.min() > 0 and a.max() < 1
  np.testing.assert_allclose(masking.alpha_inverse(a, schedule), t, atol=1e-12)
  # The derivative matches finite differences.
  h = 1e-6
  numeric = (
    masking.alpha(t + h, schedule) - masking.alpha(t - h, schedule)
  ) / (2 * h)
  np.testing.assert_allclose(
    masking.alpha_derivative(t, schedule), numeric, rtol=1e-6
  )
  assert masking.alpha(0.0, schedule) == pytest.approx(1.0)
  assert masking.alpha(1.0, schedule) == pytest.approx(0.0)


def test_linear_weight_is_one_over_t():
  t = np.array([0.1, 0.5, 1.0])
  np.testing.assert_allclose(masking.loss_weight(t), 1 / t)


def test_block_order_block_0_is_the_most_masked():
  process = masking.Masking()
  assert isinstance(process, NoiseProcess)
  bounds = process.boundaries(3)
  np.testing.assert_allclose(bounds, [1, 2 / 3, 1 / 3, 0])
  assert process.route(
    np.array([1.0, 0.9, 0.5, 0.2, 0.0]), bounds
  ).tolist() == [
    0,
    0,
    1,
    2,
    2,
  ]


@pytest.mark.parametrize("schedule", masking.SCHEDULES)
def test_partition_equalises_the_masked_mass(schedule):
  bounds = masking.Masking(schedule).boundaries(4)
  # alpha falls by 1/B across every block.
  np.testing.assert_allclose(
    np.diff(masking.alpha(bounds, schedule)), np.full(4, 0.25), atol=1e-12
  )


def test_gamma_widens_each_side_by_its_width_within_0_1():
  process = masking.Masking()
  ranges = process.widen(process.boundaries(3), 0.05)
  third = 1 / 3
  np.testing.assert_allclose(
    ranges,
    [
      [2 * third - 0.05 * third, 1.0],
      [third - 0.05 * third, 2 * third + 0.05 * third],
      [0.0, third + 0.05 * third],
    ],
  )
  np.testing.assert_allclose(
    process.widen(process.boundaries(3), 0.0)[:, 0], [2 * third, third, 0]
  )
  with pytest.raises(ValueError, match=r"gamma=0.7 is outside \[0, 0.5\]"):
    process.widen(process.boundaries(3), 0.7)


def test_explicit_boundaries_must_cover_0_1():
  process = masking.Masking()
  np.testing.assert_allclose(
    process.boundaries(2, "explicit", (1.0, 0.3, 0.0)), [1, 0.3, 0]
  )
  for bad in [(1.0, 0.3, 0.1), (0.9, 0.3, 0.0), (1.0, 0.3), (1.0, 1.0, 0.0)]:
    with pytest.raises(ValueError, match="boundaries="):
      process.boundaries(2, "explicit", bad)


def test_sample_stays_in_its_interval_and_above_t_min():
  process = masking.Masking(t_min=0.01)
  t = process.sample(jax.random.key(0), (10_000,), 0.0, 0.25)
  assert float(t.min()) >= 0.01 and float(t.max()) <= 0.25
  assert abs(float(t.mean()) - 0.13) < 0.01  # Uniform on [0.01, 0.25].


@pytest.mark.parametrize("schedule", masking.SCHEDULES)
def test_grid_unmasks_equal_shares_and_routes_each_block(schedule):
  process = masking.Masking(schedule)
  grid = process.grid(6)
  assert grid[0] == 1.0 and np.all(np.diff(grid) < 0) and grid[-1] > 0
  a = masking.alpha(np.append(grid, 0.0), schedule)
  np.testing.assert_allclose(np.diff(a), np.full(6, 1 / 6), atol=1e-12)
  # A step's start can sit on a block boundary: steps route by midpoint.
  midpoints = (grid + np.append(grid[1:], 0.0)) / 2
  blocks = process.route(midpoints, process.boundaries(3))
  assert blocks.tolist() == [0, 0, 1, 1, 2, 2]


def test_the_engine_plans_blocks_over_the_masking_schedule():
  import dblocks_jax as db

  plan = db.BlockPlan.create(
    db.Masking(), num_layers=12, num_blocks=3, gamma=0.05
  )
  assert plan.layers_per_block == (4, 4, 4)
  np.testing.assert_allclose(
    plan.train_ranges, [[0.65, 1.0], [19 / 60, 41 / 60], [0.0, 0.35]]
  )


@pytest.mark.parametrize("gamma", [0.0, 0.05, 0.5])
def test_masking_ranges_pass_the_block_order_check_without_warnings(gamma):
  import warnings

  import dblocks_jax as db
  from dblocks_jax.blockwise.plan import check_ranges

  plan = db.BlockPlan.create(
    db.Masking(), num_layers=3, num_blocks=3, gamma=gamma
  )
  assert plan.train_ranges[-1, 0] == 0.0  # The lowest range starts at t = 0.
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    np.testing.assert_array_equal(
      check_ranges(plan.train_ranges, 3), plan.train_ranges
    )
    with pytest.raises(ValueError, match="not in block order"):
      check_ranges(plan.train_ranges[::-1], 3)
    with pytest.raises(ValueError, match="not in block order"):
      check_ranges(plan.train_ranges[[1, 0, 2]], 3)
