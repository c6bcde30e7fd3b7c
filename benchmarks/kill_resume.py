"""Kill anywhere, resume exactly: N random SIGKILLs of a training run.

Runs the training command once uninterrupted (the reference), then N times
with a SIGKILL at a random moment, each followed by the same command again
until it ends. A kill aims, in turn, at a step, a checkpoint write and an
evaluation (a random one of each, after a random delay), and lands where the
log and the disk say the run was when the signal went: in a step (or the
start-up and compilation before the first), in a checkpoint write (one was
left unfinished on disk; saves run in the background, beside the steps), in
an evaluation; a kill can land in two at once (an evaluation or steps beside
a background write). Prints each kill, then how many resumed runs ended with
parameters and optimizer states bit-identical to the reference. Then
`num_stops` runs, one at a time, get SIGTERM in a random step: each must
exit with status 75 after one log line, and resume bit-identically; prints
the seconds from the signal to the exit.

  python benchmarks/kill_resume.py --num_kills=20 --workdir=runs/kill_resume

Arguments after `--` go to every training command, e.g.
`-- --config.parallel.block_groups=3` (with 3 devices) for a mesh run.
"""

import concurrent.futures
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import chex
from absl import app, flags, logging

from dblocks_jax.training.checkpoint import Checkpointer

flags.DEFINE_integer("num_kills", 20, "Killed-and-resumed runs.")
flags.DEFINE_integer("num_stops", 3, "SIGTERM-stopped-and-resumed runs.")
flags.DEFINE_integer("seed", 0, "Seeds the kill points.")
flags.DEFINE_integer("parallel", 2, "Runs at a time.")
flags.DEFINE_string("workdir", "runs/kill_resume", "Where the runs go.")
flags.DEFINE_string(
  "config", "configs/quickstart.py:smoke,official", "The training config."
)
flags.DEFINE_integer("total_steps", 60, "Steps of each run.")
flags.DEFINE_integer("checkpoint_every_steps", 10, "Steps between saves.")
flags.DEFINE_integer("eval_every_steps", 20, "Steps between evaluations.")
FLAGS = flags.FLAGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = ("step", "checkpoint write", "evaluation")
# Log lines that open a phase of the run, and the phase they open.
PHASES = (
  (re.compile(r"Saving checkpoint for step \d+"), "checkpoint write"),
  (re.compile(r"Evaluating at step \d+"), "evaluation"),
  (re.compile(r"step \d+/\d+ \("), "step"),
  (re.compile(r"Eval at step \d+"), "step"),
)


def command(workdir: str, extra) -> list[str]:
  return [
    sys.executable,
    "-m",
    "dblocks_jax.main",
    f"--config={FLAGS.config}",
    f"--config.total_steps={FLAGS.total_steps}",
    f"--config.checkpoint_every_steps={FLAGS.checkpoint_every_steps}",
    f"--config.eval_every_steps={FLAGS.eval_every_steps}",
    "--config.log_every_steps=5",
    f"--workdir={workdir}",
    *extra,
  ]


def run_to_end(workdir: str, extra) -> str:
  proc = subprocess.run(
    command(workdir, extra),
    cwd=ROOT,
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  if proc.returncode != 0:
    raise RuntimeError(f"{workdir} failed:\n{proc.stderr[-3000:]}")
  return proc.stderr


def interrupt(
  workdir: str, extra, target: str, rng: random.Random, signum=signal.SIGKILL
) -> dict:
  """Starts a run and sends `signum` a random delay after a random
  occurrence of `target`; returns where the signal landed (the last phase
  the log opened before it), the seconds to exit and the exit status."""
  marker = {
    "step": r"step \d+/\d+ \(",
    "checkpoint write": r"Saving checkpoint for step \d+",
    "evaluation": r"Evaluating at step \d+",
  }[target]
  occurrences = {
    "step": FLAGS.total_steps // 5 - 1,
    "checkpoint write": FLAGS.total_steps // FLAGS.checkpoint_every_steps - 1,
    "evaluation": max(1, FLAGS.total_steps // FLAGS.eval_every_steps - 1),
  }[target]
  nth = rng.randrange(occurrences)
  delay = rng.uniform(
    0.0, {"step": 0.1, "checkpoint write": 0.3}.get(target, 1.5)
  )
  proc = subprocess.Popen(
    command(workdir, extra),
    cwd=ROOT,
    stderr=subprocess.PIPE,
    stdout=subprocess.DEVNULL,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  lines = []
  reached = threading.Event()

  def read():
    seen = 0
    for line in proc.stderr:
      lines.append(line)
      if re.search(marker, line):
        seen += 1
        if seen == nth + 1:
          reached.set()

  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  while not reached.wait(0.05):
    if proc.poll() is not None:
      raise RuntimeError(f"{workdir}: the run ended before the kill.")
  time.sleep(delay)
  proc.send_signal(signum)
  sent = time.monotonic()
  before = list(lines)  # What the log said when the signal went.
  proc.wait()
  exit_s = time.monotonic() - sent
  reader.join()
  phase, after = "startup", ""
  for line in before:
    for pattern, name in PHASES:
      if match := pattern.search(line):
        phase, after = name, match.group(0)
  # A save runs in the background while training goes on: the kill landed
  # in a checkpoint write exactly when one was left unfinished.
  unfinished = _unfinished_saves(workdir)
  if phase == "checkpoint write" and not unfinished:
    phase = "step"  # The write had finished; training had gone on.
  elif phase != "checkpoint write" and unfinished:
    phase += " + checkpoint write"  # Both at once.
  return {
    "aimed": target,
    "delay_s": delay,
    "landed": phase,
    "after": after,
    "unfinished": unfinished,
    "exit_s": exit_s,
    "returncode": proc.returncode,
    "stop_lines": [line for line in lines if "received: stopped at" in line],
  }


def _unfinished_saves(workdir: str) -> list[str]:
  directory = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(directory):
    return []
  return sorted(n for n in os.listdir(directory) if "orbax-checkpoint-tmp" in n)


def final_state(workdir: str):
  with Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True) as c:
    return c.read_state(c.latest_step())


def bit_identical(a, b) -> bool:
  """The same structure, shapes, dtypes and values."""
  try:
    chex.assert_trees_all_equal(a, b, strict=True)
  except AssertionError:
    return False
  return True


def trial(index: int, extra, reference) -> dict:
  """One run killed at a random moment, then resumed."""
  rng = random.Random(FLAGS.seed * 1000 + index)
  workdir = os.path.join(FLAGS.workdir, f"killed_{index:02d}")
  shutil.rmtree(workdir, ignore_errors=True)
  landing = interrupt(workdir, extra, TARGETS[index % len(TARGETS)], rng)
  return _resume(workdir, extra, reference, landing)


def stop_trial(index: int, extra, reference) -> dict:
  """One run stopped by SIGTERM in a random step, then resumed."""
  rng = random.Random(FLAGS.seed * 1000 + 500 + index)
  workdir = os.path.join(FLAGS.workdir, f"stopped_{index:02d}")
  shutil.rmtree(workdir, ignore_errors=True)
  landing = interrupt(workdir, extra, "step", rng, signal.SIGTERM)
  return _resume(workdir, extra, reference, landing)


def _resume(workdir: str, extra, reference, landing: dict) -> dict:
  log = run_to_end(workdir, extra)
  restored = re.search(r"Restored checkpoint for step (\d+)", log)
  landing["resumed_from"] = int(restored.group(1)) if restored else 0
  landing["identical"] = bit_identical(final_state(workdir), reference)
  return landing


def _verdict(result: dict) -> str:
  return "bit-identical" if result["identical"] else "DIFFERENT"


def _a(phase: str) -> str:
  return ("an " if phase[0] in "aeiou" else "a ") + phase


def main(argv):
  logging.set_verbosity(logging.WARNING)  # Orbax's chatter, when reading.
  extra = argv[1:]
  os.makedirs(FLAGS.workdir, exist_ok=True)
  reference_dir = os.path.join(FLAGS.workdir, "reference")
  shutil.rmtree(reference_dir, ignore_errors=True)
  started = time.monotonic()
  run_to_end(reference_dir, extra)
  reference = final_state(reference_dir)
  print(f"reference run: {time.monotonic() - started:.1f} s", flush=True)
  results = []
  with concurrent.futures.ThreadPoolExecutor(FLAGS.parallel) as pool:
    futures = [
      pool.submit(trial, i, extra, reference) for i in range(FLAGS.num_kills)
    ]
    for i, future in enumerate(futures):
      r = future.result()
      results.append(r)
      print(
        f"kill {i + 1:2d}: aimed at {_a(r['aimed'])} (+{r['delay_s']:.3f} s),"
        f" landed in {_a(r['landed'])} (after '{r['after']}'),"
        f" unfinished saves {r['unfinished']},"
        f" resumed from step {r['resumed_from']},"
        f" {_verdict(r)}",
        flush=True,
      )
  landed = {
    where: sum(where in r["landed"].split(" + ") for r in results)
    for where in ("startup", *TARGETS)
  }
  identical = sum(r["identical"] for r in results)
  print(
    f"{identical}/{len(results)} killed runs resumed to bit-identical final"
    f" parameters and optimizer states; kills landed: {landed}.",
    flush=True,
  )
  # SIGTERM, one run at a time: the time to exit is measured unloaded.
  stops = [stop_trial(i, extra, reference) for i in range(FLAGS.num_stops)]
  for i, r in enumerate(stops):
    line = (
      r["stop_lines"][0].split("] ", 1)[-1].strip() if r["stop_lines"] else ""
    )
    print(
      f"SIGTERM {i + 1}: in {_a(r['landed'])} (after '{r['after']}'), exit"
      f" status {r['returncode']} {r['exit_s']:.2f} s after the signal,"
      f" {len(r['stop_lines'])} line: {line!r}; resumed from step"
      f" {r['resumed_from']}, {_verdict(r)}",
      flush=True,
    )
  good_stops = sum(
    r["identical"] and r["returncode"] == 75 and len(r["stop_lines"]) == 1
    for r in stops
  )
  if stops:
    times = sorted(r["exit_s"] for r in stops)
    print(
      f"{good_stops}/{len(stops)} SIGTERM stops exited with status 75 after"
      f" one log line and resumed bit-identical; signal to exit"
      f" {times[0]:.2f}-{times[-1]:.2f} s."
    )
  print(f"{time.monotonic() - started:.0f} s in all.")
  return 0 if identical == len(results) and good_stops == len(stops) else 1


if __name__ == "__main__":
  app.run(main)
