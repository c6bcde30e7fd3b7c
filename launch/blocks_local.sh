#!/usr/bin/env bash
# One process per block on one multi-device host, then the assemble step.
# Process b trains block b alone (blocks.train=[b], independent sharing) on
# its own devices: GPUs DEVICES_PER_BLOCK x b ... (CUDA_VISIBLE_DEVICES); on
# a CPU-only host each process gets DEVICES_PER_BLOCK fake devices.
#
#   NUM_BLOCKS=3 bash launch/blocks_local.sh configs/dit_cifar10.py runs/dit_c10 [FLAGS...]
#   -> runs/dit_c10_block{0,1,2} (the jobs) and runs/dit_c10 (the model)
set -euo pipefail
usage="usage: NUM_BLOCKS=B [DEVICES_PER_BLOCK=1] blocks_local.sh CONFIG WORKDIR [FLAGS...]"
config="${1:?${usage}}"
workdir="${2:?${usage}}"
shift 2
num_blocks="${NUM_BLOCKS:?${usage}}"
per_block="${DEVICES_PER_BLOCK:-1}"
common=(--config="${config}" --config.blocks.sharing=independent "$@")
pids=()
for ((b = 0; b < num_blocks; b++)); do
  first=$((b * per_block))
  devices=$(seq -s, "${first}" $((first + per_block - 1)))
  CUDA_VISIBLE_DEVICES="${devices}" \
    XLA_FLAGS="--xla_force_host_platform_device_count=${per_block} ${XLA_FLAGS:-}" \
    python -m dblocks_jax.main "${common[@]}" "--config.blocks.train=(${b},)" \
    --workdir="${workdir}_block${b}" > "${workdir}_block${b}.log" 2>&1 &
  pids+=($!)
  echo "block ${b}: devices ${devices}, log ${workdir}_block${b}.log (pid $!)"
done
for pid in "${pids[@]}"; do wait "${pid}"; done
sources=$(seq -s, -f "${workdir}_block%g" 0 $((num_blocks - 1)))
python -m dblocks_jax.main "${common[@]}" --workdir="${workdir}" \
  --mode=assemble --sources="${sources}"
python -m dblocks_jax.main "${common[@]}" --workdir="${workdir}" --mode=eval
