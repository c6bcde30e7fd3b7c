"""One writer per workdir: a lock file that names its holder.

`<workdir>/LOCK` holds the host, the pid, the process's start time and when
it was taken; a background thread touches it every `HEARTBEAT_S` seconds.
Another process that wants to write there is refused while the holder lives.
A lock left by a killed run is stale and is taken over:

* on the same host, when its pid is gone (or now belongs to a process that
  started later: a reused pid);
* from another host (a shared file system), when its heartbeat is older than
  `stale_after_s`;
* in a Slurm job that was requeued, when the holder was the same job's
  earlier start (`SLURM_JOB_ID`, `SLURM_RESTART_COUNT`), wherever it ran.

The lock is re-entrant within a process (the CLI's mode and the trainer both
take it). Only process 0 of a multi-process run takes it.
"""

import atexit
import json
import os
import socket
import threading
import time

from absl import logging

from dblocks_jax.errors import WorkdirLockedError

LOCK_FILE = "LOCK"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0

_held: dict[str, int] = {}  # path -> holders in this process
_guard = threading.Lock()
_heartbeats: dict[str, threading.Event] = {}


def _start_time(pid: int) -> str | None:
  """The kernel's start time of `pid` (Linux), to tell a reused pid apart."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # Someone else's live process.
  return True


def _slurm_job() -> list[int] | None:
  """[job id, restart count] of the Slurm job this process runs in."""
  job = os.environ.get("SLURM_JOB_ID")
  if not job or not job.isdigit():
    return None
  return [int(job), int(os.environ.get("SLURM_RESTART_COUNT") or 0)]


def _me() -> dict:
  pid = os.getpid()
  return {
    "host": socket.gethostname(),
    "pid": pid,
    "start_time": _start_time(pid),
    "taken": time.strftime("%Y-%m-%d %H:%M:%S"),
    "slurm_job": _slurm_job(),
  }


def _stale(holder: dict, path: str, stale_after_s: float) -> str | None:
  """Why the lock's holder is gone, or None when it may be alive."""
  theirs, ours = holder.get("slurm_job"), _slurm_job()
  if theirs and ours and theirs[0] == ours[0] and theirs[1] < ours[1]:
    return f"Slurm job {ours[0]} was requeued"  # Its earlier start is over.
  if holder.get("host") == socket.gethostname():
    pid = int(holder.get("pid", -1))
    if not _alive(pid):
      return f"pid {pid} is gone"
    started = holder.get("start_time")
    if started is not None and _start_time(pid) not in (None, started):
      return f"pid {pid} now belongs to another process"
    return None
  age = time.time() - os.path.getmtime(path)
  if age > stale_after_s:
    return f"no heartbeat for {age:.0f} s"
  return None


def acquire(
  workdir: str, *, stale_after_s: float = STALE_AFTER_S, create: bool = True
) -> str | None:
  """Takes the lock of `workdir`; returns the lock file's path. A missing
  `workdir` is created, or with `create=False` left alone and not locked
  (None): a mode that only reads a run finds nothing there to protect.

  Raises:
    WorkdirLockedError: a live process holds it.
  """
  workdir = os.path.abspath(workdir)
  path = os.path.join(workdir, LOCK_FILE)
  with _guard:
    if path in _held:
      _held[path] += 1
      return path
    if not create and not os.path.isdir(workdir):
      return None
    os.makedirs(workdir, exist_ok=True)
    for _ in range(10):
      try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder = _read(path)
        if holder is None:
          continue  # Removed meanwhile, or half written: try again.
        why = _stale(holder, path, stale_after_s)
        if why is None:
          elsewhere = ""
          if holder.get("host") != socket.gethostname():
            elsewhere = (
              f" (a lock whose heartbeat stops is taken over after"
              f" {stale_after_s:.0f} s; delete {path} sooner if that run is"
              " surely over)"
            )
          raise WorkdirLockedError(
            f"{workdir} is in use by pid {holder.get('pid')} on"
            f" {holder.get('host')} (since {holder.get('taken')}); wait for"
            f" that run to end, stop it, or use another --workdir{elsewhere}."
          ) from None
        _take_over(path, holder, why)
        continue
      with os.fdopen(fd, "w") as f:
        json.dump(_me(), f)
      _held[path] = 1
      _heartbeats[path] = _start_heartbeat(path)
      return path
    raise WorkdirLockedError(
      f"could not take {path}: other processes keep changing it."
    )


def release(path: str) -> None:
  """Gives back a lock taken by `acquire` (the last holder removes it)."""
  with _guard:
    if path not in _held:
      return
    _held[path] -= 1
    if _held[path]:
      return
    del _held[path]
    _heartbeats.pop(path).set()
    holder = _read(path)
    if holder and holder.get("pid") == os.getpid():
      os.remove(path)


def _read(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _take_over(path: str, holder: dict, why: str) -> None:
  """Moves a stale lock aside; if another process took it over first (what
  was moved is not the stale lock), puts that back."""
  moved = f"{path}.stale.{os.getpid()}"
  try:
    os.rename(path, moved)
  except FileNotFoundError:
    return
  if _read(moved) != holder:
    os.replace(moved, path)
    return
  os.replace(moved, f"{path}.stale")
  logging.warning(
    "Took over the stale lock of %s (pid %s on %s: %s).",
    os.path.dirname(path),
    holder.get("pid"),
    holder.get("host"),
    why,
  )


def _start_heartbeat(path: str) -> threading.Event:
  stop = threading.Event()

  def beat():
    while not stop.wait(HEARTBEAT_S):
      try:
        os.utime(path)
      except OSError:
        return

  threading.Thread(target=beat, name="workdir-lock", daemon=True).start()
  return stop


@atexit.register
def _release_all() -> None:
  for path in list(_held):
    _held[path] = 1
    release(path)


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds the lock of `workdir` (process 0 of a
  multi-process run only; the others hold nothing). `create=False` leaves a
  missing workdir alone and holds nothing."""

  def __init__(
    self, workdir: str, *, process_index: int = 0, create: bool = True
  ):
    self._workdir = workdir
    self._process_index = process_index
    self._create = create
    self._path = None

  def __enter__(self) -> "WorkdirLock":
    if self._process_index == 0:
      self._path = acquire(self._workdir, create=self._create)
    return self

  def __exit__(self, *exc_info) -> None:
    if self._path is not None:
      release(self._path)
      self._path = None
