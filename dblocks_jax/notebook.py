"""What the notebooks under colab/ share: where they run and what they keep.

A notebook sizes its run to the machine (`Environment.accelerated`: the
full small run on a TPU or GPU, a minutes-long run on a CPU), writes its
runs, figures and `results.json` under one output folder, and reads its
runs' curves back from their `metrics.jsonl`:

    env = notebook.environment()
    out = notebook.output_dir("01_quickstart")
    steps = 6000 if env.accelerated else 600
    ...
    curve = notebook.curve(workdir, "loss/block_0")   # (steps, values)
    notebook.save_results(out, {"accuracy": accuracy})

The output folder is `$DBLOCKS_NOTEBOOK_OUT` when set (the test suite sets
it), else `runs/<name>` under the working directory. Library code stays in
the library: nothing here trains or evaluates.
"""

import dataclasses
import json
import os

import jax
import numpy as np

from dblocks_jax.training import metrics

OUTPUT_ENV = "DBLOCKS_NOTEBOOK_OUT"


@dataclasses.dataclass(frozen=True)
class Environment:
  """The devices a notebook runs on."""

  backend: str  # "tpu", "gpu" or "cpu".
  device_kind: str  # e.g. "TPU v2", "NVIDIA T4", "cpu".
  num_devices: int

  @property
  def accelerated(self) -> bool:
    """Whether the run can take its full small size (a TPU or GPU)."""
    return self.backend in ("tpu", "gpu")

  def describe(self) -> str:
    size = "full small run" if self.accelerated else "CPU-sized run"
    return (
      f"{self.num_devices} x {self.device_kind} ({self.backend}): the {size}."
    )


def environment() -> Environment:
  """The default backend's devices (initialises JAX's backends)."""
  devices = jax.devices()
  return Environment(
    backend=jax.default_backend(),
    device_kind=devices[0].device_kind,
    num_devices=len(devices),
  )


def output_dir(name: str) -> str:
  """The notebook's output folder (created): `$DBLOCKS_NOTEBOOK_OUT`, or
  `runs/<name>` under the working directory."""
  path = os.environ.get(OUTPUT_ENV) or os.path.join("runs", name)
  path = os.path.abspath(path)
  os.makedirs(path, exist_ok=True)
  return path


def curve(workdir: str, key: str) -> tuple[np.ndarray, np.ndarray]:
  """One metric of a run over its steps, from `metrics.jsonl`.

  Returns:
    (steps [n], values [n]), in step order; a step logged twice (a resumed
    run repeats the steps after its last checkpoint) keeps its last value.
  """
  by_step = {
    record["step"]: record[key]
    for record in metrics.read_metrics(workdir)
    if record.get(key) is not None
  }
  steps = np.array(sorted(by_step), dtype=np.int64)
  values = np.array([by_step[s] for s in steps], dtype=np.float64)
  return steps, values


def save_results(out: str, results: dict) -> str:
  """Writes `results` to `<out>/results.json` (what the tests read)."""
  path = os.path.join(out, "results.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(results, f, indent=2, sort_keys=True, default=float)
  return path
