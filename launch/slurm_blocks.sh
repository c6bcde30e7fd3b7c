#!/usr/bin/env bash
# A Slurm array job (one task per block, each on its own node or GPUs),
# then an assemble-and-evaluate job that waits for all of them.
#
#   NUM_BLOCKS=3 bash launch/slurm_blocks.sh configs/dit_imagenet.py /shared/runs/dit_in \
#     --config.data.dir=/shared/imagenet_latents \
#     --config.eval.inception_weights=/shared/pt_inception-2015-12-05-6726825d.pth
#
# SBATCH_ARGS adds sbatch options (partition, account, --gpus-per-task=...).
# WORKDIR must be on a filesystem that every node sees.
#
# Preemption and time limits: each training task asks Slurm for SIGTERM
# SIGNAL_SECONDS (default 120) before its time limit (--signal) and may be
# requeued (--requeue). On SIGTERM, whether from the limit or a preemption,
# the trainer finishes its step, writes a checkpoint and exits with status 75;
# launch/slurm_requeue.sh then requeues the task, whose next start resumes
# from that checkpoint (its log is appended to). A task killed outright
# resumes from its newest checkpoint, and its workdir's lock passes to the
# requeued task. The assemble job waits until every task has ended well.
set -euo pipefail
usage="usage: NUM_BLOCKS=B slurm_blocks.sh CONFIG WORKDIR [FLAGS...]"
config="${1:?${usage}}"
workdir="${2:?${usage}}"
shift 2
num_blocks="${NUM_BLOCKS:?${usage}}"
read -r -a sbatch_args <<< "${SBATCH_ARGS:-}"
flags="--config=${config} --config.blocks.sharing=independent $*"
requeue="$(cd "$(dirname "$0")" && pwd)/slurm_requeue.sh"
mkdir -p "$(dirname "${workdir}")"

train_job=$(sbatch --parsable "${sbatch_args[@]}" \
  --job-name=dblocks-blocks --array=0-$((num_blocks - 1)) \
  --output="${workdir}_block%a.log" --open-mode=append \
  --signal="B:TERM@${SIGNAL_SECONDS:-120}" --requeue \
  --wrap="bash ${requeue} python -m dblocks_jax.main ${flags} \
    --config.blocks.train=\"(\${SLURM_ARRAY_TASK_ID},)\" \
    --workdir=${workdir}_block\${SLURM_ARRAY_TASK_ID}")
echo "training: array job ${train_job} (${num_blocks} tasks)"

sources=$(seq -s, -f "${workdir}_block%g" 0 $((num_blocks - 1)))
assemble_job=$(sbatch --parsable "${sbatch_args[@]}" \
  --job-name=dblocks-assemble --dependency="afterok:${train_job}" \
  --output="${workdir}_assemble.log" \
  --wrap="python -m dblocks_jax.main ${flags} --workdir=${workdir} \
    --mode=assemble --sources=${sources} && \
    python -m dblocks_jax.main ${flags} --workdir=${workdir} --mode=eval")
echo "assemble + eval: job ${assemble_job}, after ${train_job}"
