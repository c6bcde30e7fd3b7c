#!/usr/bin/env bash
# Block-parallel training on a TPU VM slice (one or many hosts): every host
# runs the same command; --distributed calls jax.distributed.initialize(),
# and the mesh puts parallel.block_groups groups of chips on the `block` axis
# (the remaining chips of each group split the batch along `data`).
#
#   TPU=my-v4-32 ZONE=us-central2-b BLOCK_GROUPS=3 \
#     bash launch/tpu_pod.sh configs/dit_imagenet.py /mnt/shared/runs/dit_in \
#     --config.data.dir=/mnt/shared/imagenet_latents \
#     --config.eval.inception_weights=/mnt/shared/pt_inception-2015-12-05-6726825d.pth
#
# The repository must be installed on every host (e.g. `pip install -e .` in
# REPO_DIR), and WORKDIR must be a filesystem every host sees.
#
# Preemption. A preempted (spot) TPU VM gets SIGTERM shortly before it stops.
# Each host's trainer records it; at the next multiple of log_every_steps all
# hosts agree to stop, write one checkpoint together, log one line and exit
# with status 75. Keep log_every_steps small enough that the steps up to it
# fit in the notice (about 30 s on spot TPUs); a host that is gone before
# then leaves the others waiting, and the run resumes from the checkpoint
# before. Either way, once the slice is back (re-create it, or let a queued
# resource do so), run this same command: it resumes from the newest intact
# checkpoint, skipping a damaged one with a warning, and ends as an
# uninterrupted run would. Exit statuses: 0 done, 75 stopped with a
# checkpoint (run again), anything else an error printed in the log. A lock
# left by a host that is gone (WORKDIR/LOCK) is taken over once its heartbeat
# is 10 minutes old; delete it sooner if that run is surely over.
set -euo pipefail
usage="usage: TPU=NAME ZONE=ZONE BLOCK_GROUPS=G tpu_pod.sh CONFIG WORKDIR [FLAGS...]"
config="${1:?${usage}}"
workdir="${2:?${usage}}"
shift 2
repo_dir="${REPO_DIR:-~/dblocks_jax}"
command="cd ${repo_dir} && python -m dblocks_jax.main --distributed \
  --config=${config} --workdir=${workdir} \
  --config.parallel.block_groups=${BLOCK_GROUPS:?${usage}} $*"
gcloud compute tpus tpu-vm ssh "${TPU:?${usage}}" --zone="${ZONE:?${usage}}" \
  --worker=all --command="${command}"
