"""Faults met as a user meets them, with real processes and signals.

A run killed with SIGKILL (in a step, in a checkpoint write, in an
evaluation) resumes with the same command and ends bit-identical to the
uninterrupted run: block-wise, end to end, on a mesh and as a per-block job.
SIGTERM stops a run with a checkpoint, one log line and exit status 75. A
workdir has one writer; a stale lock is taken over. Damaged checkpoints are
skipped with a warning by the command line's readers.
"""

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time

import chex
import jax
import pytest
from conftest import xla_flags

from dblocks_jax.errors import WorkdirLockedError
from dblocks_jax.training import workdir_lock
from dblocks_jax.training.checkpoint import Checkpointer

ROOT = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
# 30 steps of the official quickstart smoke config: checkpoints every 5
# steps, an evaluation at step 15.
RUN = (
  "--config=configs/quickstart.py:smoke,official",
  "--config.total_steps=30",
  "--config.checkpoint_every_steps=5",
  "--config.log_every_steps=5",
  "--config.eval_every_steps=15",
)
E2E = ("--config=configs/quickstart.py:smoke,official,e2e", *RUN[1:])


def _start(workdir, *args, devices=1, cache=None):
  """The command line in a process of its own; stdout and stderr merged.

  `cache`: a JAX compilation cache directory. A test warms it with a run
  that ends before any run it interrupts starts, so that an interrupted run
  only reads it (a kill never cuts a cache write short).
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = xla_flags(
    f"--xla_force_host_platform_device_count={devices}"
  )
  if cache is not None:
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  return subprocess.Popen(
    [sys.executable, "-m", "dblocks_jax.main", *args, f"--workdir={workdir}"],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    env=env,
  )


def _finish(proc, status=0):
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == status, out[-3000:]
  return out


def _signal_at(proc, marker, signum):
  """Sends `signum` as soon as a log line contains `marker`; returns the log
  and the seconds from the signal to the process's exit."""
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if marker in line:
      proc.send_signal(signum)
      sent = time.monotonic()
      break
  else:
    proc.wait()
    pytest.fail(f"no log line with {marker!r}:\n{''.join(lines)[-3000:]}")
  lines.extend(proc.stdout)
  proc.wait(timeout=600)
  return "".join(lines), time.monotonic() - sent


def _final_state(workdir, step):
  directory = os.path.join(workdir, "checkpoints")
  with Checkpointer(directory, read_only=True) as checkpoints:
    return checkpoints.read_state(step)


def _assert_bit_identical(resumed, reference, step=30):
  a, b = _final_state(resumed, step), _final_state(reference, step)
  assert len(jax.tree.leaves(a)) > 20  # Parameters and every optimizer state.
  chex.assert_trees_all_equal(a, b, strict=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """(workdir, compilation cache) of the uninterrupted block-wise run."""
  root = tmp_path_factory.mktemp("reference")
  _finish(_start(root / "run", *RUN, cache=root / "cache"))
  return root / "run", root / "cache"


@pytest.mark.parametrize(
  ("args", "devices", "marker", "final_step"),
  [
    pytest.param(E2E, 1, "Evaluating at step 15", 30, id="end_to_end"),
    pytest.param(
      (*RUN, "--config.parallel.block_groups=3"),
      3,
      "step 21/30",  # Three blocks, one per group: steps go by 3.
      30,
      id="mesh",
    ),
    pytest.param(
      (
        *RUN,
        "--config.blocks.train=(1,)",
        "--config.blocks.sharing=independent",
        "--config.total_steps=60",
      ),
      1,
      "Saving checkpoint for step 10",
      20,  # Block 1's 60 // 3 updates.
      id="per_block_job",
    ),
  ],
)
def test_sigkill_then_the_same_command_ends_bit_identical(
  tmp_path, args, devices, marker, final_step
):
  cache = tmp_path / "cache"
  _finish(_start(tmp_path / "reference", *args, devices=devices, cache=cache))
  killed = _start(tmp_path / "killed", *args, devices=devices, cache=cache)
  log, _ = _signal_at(killed, marker, signal.SIGKILL)
  assert killed.returncode == -signal.SIGKILL
  assert "Final:" not in log  # It was stopped before its end.
  resumed = _finish(
    _start(tmp_path / "killed", *args, devices=devices, cache=cache)
  )
  assert "Took over the stale lock" in resumed  # The killed run's.
  assert "Restored checkpoint for step" in resumed
  _assert_bit_identical(tmp_path / "killed", tmp_path / "reference", final_step)


def test_blockwise_sigkill_and_sigterm_resume_bit_identical(
  tmp_path, reference
):
  """A block-wise run killed in a checkpoint write, and one stopped by
  SIGTERM (one log line, exit status 75), both resume exactly."""
  reference_run, cache = reference
  killed = _start(tmp_path / "killed", *RUN, cache=cache)
  stopped = _start(tmp_path / "stopped", *RUN, cache=cache)
  _signal_at(killed, "Saving checkpoint for step 10", signal.SIGKILL)
  assert killed.returncode == -signal.SIGKILL
  log, seconds = _signal_at(stopped, "step 10/30", signal.SIGTERM)
  assert stopped.returncode == 75, log[-3000:]
  assert "Traceback" not in log
  lines = [line for line in log.splitlines() if "SIGTERM" in line]
  assert len(lines) == 1, lines
  assert "SIGTERM received: stopped at step " in lines[0]
  assert f"checkpoint in {tmp_path / 'stopped'}" in lines[0]
  assert "run the same command to resume" in lines[0]
  assert seconds < 30, seconds  # A step and a checkpoint, not the run.
  step = int(lines[0].split("stopped at step ")[1].split()[0])
  # Steps of the smoke run take milliseconds: a few may pass between the
  # log line and the signal's arrival, but not the run's end.
  assert 10 <= step < 30, lines[0]
  assert os.path.isdir(tmp_path / "stopped" / "checkpoints" / str(step))
  assert not os.path.exists(tmp_path / "stopped" / "LOCK")
  resumed = [
    _start(tmp_path / name, *RUN, cache=cache) for name in ("killed", "stopped")
  ]
  for proc in resumed:
    assert "Restored checkpoint for step" in _finish(proc)
  _assert_bit_identical(tmp_path / "killed", reference_run)
  _assert_bit_identical(tmp_path / "stopped", reference_run)


def test_a_full_disk_stops_with_one_line_and_the_run_resumes(
  tmp_path, reference
):
  """The disk fills (no file may grow past 20 KB: RLIMIT_FSIZE, set on the
  running process) once the first checkpoint is complete; the next write
  fails."""
  workdir, cache = tmp_path / "run", reference[1]
  # No evaluation during the run: nothing to compile once the disk is full.
  args = (*RUN, "--config.eval_every_steps=0")
  proc = _start(workdir, *args, cache=cache)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if os.path.isdir(workdir / "checkpoints" / "5"):  # Committed.
      resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (20_000, 20_000))
      break
  lines.extend(proc.stdout)
  proc.wait(timeout=600)
  out = "".join(lines)
  assert proc.returncode == 4, out[-3000:]
  assert "Traceback" not in out
  last = out.strip().splitlines()[-1]
  assert last.startswith("error: writing the checkpoint of step "), last
  assert f"in {workdir / 'checkpoints'} failed" in last
  assert "File too large" in last
  intact = int(last.split("; the checkpoint of step ")[1].split()[0])
  assert intact >= 5 and "run the same command again to resume" in last
  resumed = _finish(_start(workdir, *args, cache=cache))
  assert f"Restored checkpoint for step {intact}" in resumed
  assert "accuracy:" in resumed


def _hold_lock(workdir):
  """Another live process that holds `workdir`'s lock."""
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sys, time; from dblocks_jax.training import workdir_lock;"
      " workdir_lock.acquire(sys.argv[1]); print('held', flush=True);"
      " time.sleep(600)",
      str(workdir),
    ],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    text=True,
  )
  assert holder.stdout.readline().strip() == "held"
  return holder


def _one_line_error(proc, status):
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == status, out[-3000:]
  assert "Traceback" not in out
  last = out.strip().splitlines()[-1]
  assert last.startswith("error: "), last
  return last


def test_a_live_run_keeps_its_workdir_and_a_killed_one_gives_it_up(tmp_path):
  workdir = tmp_path / "run"
  holder = _hold_lock(workdir)
  try:
    for mode in ("train", "eval"):
      line = _one_line_error(_start(workdir, *RUN, f"--mode={mode}"), 5)
      assert f"{workdir} is in use by pid {holder.pid} on" in line
      assert "use another --workdir" in line
  finally:
    holder.kill()
    holder.wait()
  # The killed holder's lock is stale: the next run takes it over (and
  # then stops, for want of a checkpoint to evaluate).
  proc = _start(workdir, *RUN, "--mode=eval")
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 2, out[-3000:]
  assert f"Took over the stale lock of {workdir} (pid {holder.pid}" in out
  assert "is gone" in out
  assert out.strip().splitlines()[-1].startswith("error: no checkpoint")
  assert not os.path.exists(workdir / "LOCK")


def _write_lock(workdir, **holder):
  os.makedirs(workdir, exist_ok=True)
  with open(workdir / "LOCK", "w") as f:
    json.dump({"taken": "earlier", **holder}, f)


def test_stale_locks_are_told_apart_from_live_ones(tmp_path):
  here = socket.gethostname()
  # A live process of this host holds it.
  _write_lock(tmp_path / "live", host=here, pid=os.getppid())
  with pytest.raises(WorkdirLockedError, match=f"pid {os.getppid()} on"):
    workdir_lock.acquire(tmp_path / "live")
  # Its pid now belongs to a process that started later.
  _write_lock(tmp_path / "reused", host=here, pid=os.getpid(), start_time="1")
  path = workdir_lock.acquire(tmp_path / "reused")
  workdir_lock.release(path)
  # Another host: a fresh heartbeat is alive, an old one is not.
  _write_lock(tmp_path / "remote", host="elsewhere", pid=1)
  with pytest.raises(WorkdirLockedError, match="on elsewhere"):
    workdir_lock.acquire(tmp_path / "remote")
  old = time.time() - 2 * workdir_lock.STALE_AFTER_S
  os.utime(tmp_path / "remote" / "LOCK", (old, old))
  path = workdir_lock.acquire(tmp_path / "remote")
  with open(path) as f:
    assert json.load(f)["pid"] == os.getpid()
  workdir_lock.release(path)
  assert not os.path.exists(path)
  # What was taken over is kept beside it.
  with open(tmp_path / "remote" / "LOCK.stale") as f:
    assert json.load(f)["host"] == "elsewhere"


def test_a_requeued_slurm_job_takes_over_its_own_lock(tmp_path, monkeypatch):
  monkeypatch.setenv("SLURM_JOB_ID", "42")
  monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
  # Its first start ran on another node moments ago: the heartbeat is fresh.
  _write_lock(tmp_path / "a", host="node1", pid=1, slurm_job=[42, 0])
  workdir_lock.release(workdir_lock.acquire(tmp_path / "a"))
  # Another job's lock is not ours to take.
  _write_lock(tmp_path / "b", host="node1", pid=1, slurm_job=[41, 0])
  with pytest.raises(WorkdirLockedError, match="on node1"):
    workdir_lock.acquire(tmp_path / "b")


def test_slurm_wrapper_passes_sigterm_on_and_requeues_on_status_75(tmp_path):
  """launch/slurm_requeue.sh with a stand-in `scontrol` that records its
  arguments; the command stands for a trainer stopping with a checkpoint."""
  scontrol = tmp_path / "scontrol"
  scontrol.write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n')
  scontrol.chmod(0o755)
  trainer = (
    "import signal, sys, time;"
    " signal.signal(signal.SIGTERM, lambda *_: sys.exit(75));"
    " print('training', flush=True); time.sleep(60); sys.exit(0)"
  )
  env = dict(
    os.environ,
    PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}",
    SCONTROL_LOG=str(tmp_path / "log"),
    SLURM_JOB_ID="42",
  )
  job = subprocess.Popen(
    ["bash", "launch/slurm_requeue.sh", sys.executable, "-c", trainer],
    cwd=ROOT,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=env,
  )
  assert job.stdout.readline().strip() == "training"
  job.send_signal(signal.SIGTERM)  # What Slurm's --signal=B:TERM sends.
  _, err = job.communicate(timeout=60)
  assert job.returncode == 75, err
  assert (tmp_path / "log").read_text().split() == ["requeue", "42"]
  assert "requeueing job 42" in err


def test_eval_falls_back_from_a_damaged_checkpoint_then_stops_cleanly(
  tmp_path, reference
):
  reference_run, cache = reference
  workdir = tmp_path / "run"
  shutil.copytree(reference_run, workdir)
  checkpoints = workdir / "checkpoints"
  assert sorted(os.listdir(checkpoints)) == ["25", "30"]

  def damage(step):
    for dirpath, _, files in os.walk(checkpoints / str(step) / "state"):
      for name in files:
        if not name.startswith("_"):
          with open(os.path.join(dirpath, name), "r+b") as f:
            f.write(b"\xff" * 16)

  damage(30)
  out = _finish(_start(workdir, *RUN, "--mode=eval", cache=cache))
  assert "The checkpoint of step 30" in out and "is damaged" in out
  assert "Using the checkpoint of step 25 instead" in out
  assert out.splitlines()[-1].startswith("accuracy:")
  assert "step 25" in out.splitlines()[-1]
  # Reading never moves or deletes anything.
  assert sorted(os.listdir(checkpoints)) == ["25", "30"]

  damage(25)
  line = _one_line_error(_start(workdir, *RUN, "--mode=eval", cache=cache), 4)
  assert f"no intact checkpoint in {checkpoints}" in line
  assert "step 30:" in line and "step 25:" in line
  assert "Nothing was deleted" in line
  # Training does not start afresh over them either.
  line = _one_line_error(_start(workdir, *RUN, cache=cache), 4)
  assert f"no intact checkpoint in {checkpoints}" in line
  assert sorted(os.listdir(checkpoints)) == ["25", "30"]
