"""Tests of dblocks_jax.training.metrics."""

import importlib.util
import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging as absl_logging

from dblocks_jax.training import metrics


def _lines(workdir):
  with open(os.path.join(workdir, metrics.METRICS_FILE)) as f:
    return [json.loads(line) for line in f]


class _FakeClock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_scalars_are_json_lines_with_step(tmp_path):
  workdir = str(tmp_path / "run")
  with metrics.MetricWriter(workdir, process_index=0) as writer:
    writer.write_scalars(
      1,
      {
        "loss": jnp.float32(0.5),
        "lr": np.float64(1e-3),
        "count": jnp.array(7, jnp.int32),
        "ok": np.bool_(True),
        "plain": 2.5,
      },
    )
    writer.write_scalars(np.int64(2), {"loss": jnp.array([0.25])})
  lines = _lines(workdir)
  assert lines == [
    {"step": 1, "loss": 0.5, "lr": 1e-3, "count": 7, "ok": True, "plain": 2.5},
    {"step": 2, "loss": 0.25},
  ]
  assert isinstance(lines[0]["count"], int)
  assert metrics.read_metrics(workdir) == lines


def test_non_finite_values_become_null(tmp_path):
  with metrics.MetricWriter(tmp_path, process_index=0) as writer:
    writer.write_scalars(
      3, {"loss": jnp.nan, "grad": np.inf, "neg": -math.inf, "x": 1.0}
    )
  with open(tmp_path / metrics.METRICS_FILE) as f:
    text = f.read()
  assert "NaN" not in text and "Infinity" not in text
  assert json.loads(text) == {
    "step": 3,
    "loss": None,
    "grad": None,
    "neg": None,
    "x": 1.0,
  }


def test_rejects_bad_values(tmp_path):
  with metrics.MetricWriter(tmp_path, process_index=0) as writer:
    with pytest.raises(TypeError, match="'v'"):
      writer.write_scalars(1, {"v": np.ones(3)})
    with pytest.raises(TypeError, match="'s'"):
      writer.write_scalars(1, {"s": "text"})
    with pytest.raises(ValueError, match="reserved"):
      writer.write_scalars(1, {"step": 1})
  with pytest.raises(ValueError, match="closed"):
    writer.write_scalars(2, {"loss": 1.0})


def test_lines_survive_without_close(tmp_path):
  writer = metrics.MetricWriter(tmp_path, process_index=0)
  writer.write_scalars(1, {"loss": 1.0})
  # Readable before flush() or close(), as after a kill.
  assert metrics.read_metrics(tmp_path) == [{"step": 1, "loss": 1.0}]
  writer.close()


def test_append_on_reopen_and_truncated_line(tmp_path):
  with metrics.MetricWriter(tmp_path, process_index=0) as writer:
    writer.write_scalars(1, {"loss": 1.0})
  # A run killed in the middle of a line.
  with open(tmp_path / metrics.METRICS_FILE, "a") as f:
    f.write('{"step": 2, "lo')
  assert metrics.read_metrics(tmp_path) == [{"step": 1, "loss": 1.0}]
  with metrics.MetricWriter(tmp_path, process_index=0) as writer:
    writer.write_scalars(2, {"loss": 0.5})
  assert metrics.read_metrics(tmp_path) == [
    {"step": 1, "loss": 1.0},
    {"step": 2, "loss": 0.5},
  ]


def test_read_metrics_missing_file(tmp_path):
  assert metrics.read_metrics(tmp_path / "nothing") == []


def test_write_json_is_atomic_and_converts(tmp_path):
  writer = metrics.MetricWriter(tmp_path, process_index=0)
  payload = {
    "fid": np.float32(12.5),
    "per_block": jnp.array([1.0, np.nan]),
    "nested": {"n": np.int64(4), "ok": [1, 2]},
  }
  path = writer.write_json("eval.json", payload)
  assert path == os.path.join(str(tmp_path), "eval.json")
  with open(path) as f:
    assert json.load(f) == {
      "fid": 12.5,
      "per_block": [1.0, None],
      "nested": {"n": 4, "ok": [1, 2]},
    }
  writer.write_json("eval.json", {"fid": 3})
  with open(path) as f:
    assert json.load(f) == {"fid": 3}
  writer.close()
  assert sorted(os.listdir(tmp_path)) == ["eval.json", metrics.METRICS_FILE]


def test_other_processes_write_nothing(tmp_path):
  workdir = tmp_path / "run"
  with metrics.MetricWriter(workdir, process_index=1) as writer:
    writer.write_scalars(1, {"loss": 1.0})
    path = writer.write_json("eval.json", {"fid": 1.0})
  assert path == os.path.join(str(workdir), "eval.json")
  assert not os.path.exists(workdir)


def test_tensorboard_without_tensorflow_warns(tmp_path, monkeypatch):
  if importlib.util.find_spec("tensorflow") is not None:
    pytest.skip("TensorFlow is installed.")
  warnings = []
  monkeypatch.setattr(
    absl_logging, "warning", lambda msg, *args: warnings.append(msg % args)
  )
  with metrics.MetricWriter(tmp_path, tensorboard=True, process_index=0) as w:
    w.write_scalars(1, {"loss": 1.0})
  assert len(warnings) == 1
  assert "pip install dblocks_jax[tensorboard]" in warnings[0]
  assert metrics.read_metrics(tmp_path) == [{"step": 1, "loss": 1.0}]


def test_progress_rate_eta_and_pause():
  clock = _FakeClock()
  progress = metrics.Progress(1000, start_step=100, clock=clock)
  first = progress.update(100)
  assert math.isnan(first["steps_per_sec"])
  assert math.isnan(first["eta_seconds"])
  assert first["percent"] == pytest.approx(10.0)

  clock.now += 10.0
  stats = progress.update(200)
  assert stats["steps_per_sec"] == pytest.approx(10.0)
  assert stats["eta_seconds"] == pytest.approx(80.0)
  assert stats["percent"] == pytest.approx(20.0)

  with progress.paused():
    clock.now += 1000.0  # Evaluation: does not count.
    with progress.paused():
      clock.now += 5.0
  clock.now += 10.0
  stats = progress.update(300)
  assert stats["steps_per_sec"] == pytest.approx(10.0)
  assert stats["eta_seconds"] == pytest.approx(70.0)

  assert (
    progress.describe(300) == "step 300/1000 (30.0%) 10.00 steps/s ETA 1m10s"
  )
  assert progress.update(1000)["eta_seconds"] == 0.0


def test_progress_uses_recent_window():
  clock = _FakeClock()
  progress = metrics.Progress(10_000, clock=clock, window=3)
  progress.update(0)
  clock.now += 100.0  # A slow start (compilation) leaves the window.
  progress.update(10)
  for step in (20, 30):
    clock.now += 1.0
    stats = progress.update(step)
  assert stats["steps_per_sec"] == pytest.approx(10.0)


def test_progress_first_describe():
  progress = metrics.Progress(5000, clock=_FakeClock())
  assert progress.describe(0) == "step 0/5000 (0.0%) ? steps/s ETA ?"


@pytest.mark.parametrize(
  ("seconds", "expected"),
  [
    (0, "0s"),
    (5.4, "5s"),
    (65, "1m05s"),
    (3600, "1h00m00s"),
    (3725, "1h02m05s"),
    (90000, "25h00m00s"),
    (math.nan, "?"),
    (math.inf, "?"),
    (-1, "?"),
  ],
)
def test_format_duration(seconds, expected):
  assert metrics.format_duration(seconds) == expected


def test_tensorboard_with_tensorflow_writes_events(tmp_path):
  if importlib.util.find_spec("tensorflow") is None:
    pytest.skip("needs the [tensorboard] extra (TensorFlow)")
  writer = metrics.MetricWriter(str(tmp_path), tensorboard=True)
  writer.write_scalars(3, {"loss": 0.5})
  writer.close()
  events = [
    name
    for _, _, files in os.walk(tmp_path / metrics.TENSORBOARD_DIR)
    for name in files
    if "tfevents" in name
  ]
  assert events
  assert metrics.read_metrics(str(tmp_path))[0] == {"step": 3, "loss": 0.5}
