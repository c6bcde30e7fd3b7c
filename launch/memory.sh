#!/usr/bin/env bash
# Compiled memory of the block step against the end-to-end step (no data, no
# training): writes WORKDIR/memory.json and prints the temporary-bytes ratio.
#
#   bash launch/memory.sh configs/vit_cifar100.py runs/memory_cifar100
set -euo pipefail
config="${1:?usage: memory.sh CONFIG WORKDIR [FLAGS...]}"
workdir="${2:?usage: memory.sh CONFIG WORKDIR [FLAGS...]}"
shift 2
python -m dblocks_jax.main --config="${config}" --workdir="${workdir}" --mode=memory "$@"
