"""Multi-process training: two processes (jax.distributed on localhost, CPU
collectives through gloo) train ONE model, equal to one process with the
same global batch."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
from conftest import xla_flags

ROOT = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
WORKER = os.path.join(ROOT, "tests", "helpers", "distributed_worker.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run(out, num_processes, devices):
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        WORKER,
        str(out),
        str(i),
        str(num_processes),
        str(devices),
        str(port),
      ],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      env=env,
    )
    for i in range(num_processes)
  ]
  for proc in procs:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]


def _load(path):
  with np.load(path) as saved:
    return [saved[k] for k in saved.files if k != "step"], int(saved["step"])


def test_two_processes_train_one_model(tmp_path):
  """Block-wise and end-to-end runs alike."""
  (tmp_path / "two").mkdir()
  (tmp_path / "one").mkdir()
  _run(tmp_path / "two", num_processes=2, devices=1)
  _run(tmp_path / "one", num_processes=1, devices=2)
  for method in ("dblocks", "e2e"):
    first, step = _load(tmp_path / "two" / f"state_{method}_0.npz")
    second, _ = _load(tmp_path / "two" / f"state_{method}_1.npz")
    single, single_step = _load(tmp_path / "one" / f"state_{method}_0.npz")
    assert step == single_step == 6
    # The two processes hold the same model, bit for bit...
    for a, b in zip(first, second, strict=True):
      np.testing.assert_array_equal(a, b)
    # ...equal to one process (two devices) on the same global batches.
    for a, b in zip(first, single, strict=True):
      np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-5)


def _cli(args, workdir, extra_env=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.update(extra_env or {})
  return subprocess.Popen(
    [sys.executable, "-m", "dblocks_jax.main", *args, f"--workdir={workdir}"],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=env,
  )


def test_block_groups_on_two_processes_equal_one_process(tmp_path):
  """The command line with --distributed: 2 groups of blocks, one per
  process, train the model that 2 groups on one process train."""
  args = [
    "--config=configs/quickstart.py:smoke,official",
    "--config.model.num_layers=2",
    "--config.blocks.num_blocks=2",
    "--config.blocks.sharing=independent",
    "--config.parallel.block_groups=2",
  ]
  port = _free_port()
  procs = [
    _cli(
      [
        *args,
        "--distributed",
        f"--coordinator_address=localhost:{port}",
        "--num_processes=2",
        f"--process_id={i}",
      ],
      tmp_path / "two",
    )
    for i in range(2)
  ]
  procs.append(
    _cli(
      args,
      tmp_path / "one",
      {"XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=2")},
    )
  )
  for proc in procs:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "trained all blocks" in out or "accuracy:" in out

  from dblocks_jax.families import runs

  states = []
  for run in ("two", "one"):
    config = runs.read_run_config(str(tmp_path / run))
    trainer = runs.restore_run(
      config, str(tmp_path / run), with_optimizer=True
    )[2]
    states.append(trainer.state)
    trainer.close()
  assert int(states[0]["step"]) == int(states[1]["step"]) == 12
  for a, b in zip(
    jax.tree.leaves(states[0]["blocks"]),
    jax.tree.leaves(states[1]["blocks"]),
    strict=True,
  ):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)
