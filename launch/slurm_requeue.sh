#!/usr/bin/env bash
# Runs a training command inside a Slurm batch job so that preemption and the
# time limit lose nothing: `slurm_blocks.sh` asks Slurm for SIGTERM
# (--signal=B:TERM@SECONDS) before the limit; this script passes it on to the
# command, which finishes its step, writes a checkpoint and exits with status
# 75; the job is then requeued (`scontrol requeue`), and its next start runs
# the same command, which resumes from the checkpoint.
#
#   bash launch/slurm_requeue.sh python -m dblocks_jax.main --config=... --workdir=...
#
# Any other exit status is the job's own.
set -uo pipefail
# The traps go in before the command starts, so that a signal in between is
# held and passed on as soon as there is a child to pass it to.
child=""
pending=""
forward() {
  if [ -n "${child}" ]; then
    kill -"$1" "${child}" 2>/dev/null
  else
    pending="$1"
  fi
}
trap 'forward TERM' TERM
trap 'forward INT' INT
"$@" &
child=$!
if [ -n "${pending}" ]; then
  kill -"${pending}" "${child}" 2>/dev/null
fi
status=0
while true; do
  wait "${child}"
  status=$?
  # `wait` returns early (status > 128) when a trapped signal arrives.
  kill -0 "${child}" 2>/dev/null || break
done
if [ "${status}" -eq 75 ]; then
  echo "stopped with a checkpoint; requeueing job ${SLURM_JOB_ID:?}" >&2
  scontrol requeue "${SLURM_JOB_ID}"
fi
exit "${status}"
