#!/usr/bin/env bash
# Trains a config block-wise and end to end (same number of layer evaluations)
# and prints both test accuracies. Extra arguments go to both runs.
#
#   bash launch/compare.sh configs/vit_fashion_mnist.py runs/fm [--config.seed=1]
set -euo pipefail
config="${1:?usage: compare.sh CONFIG WORKDIR_PREFIX [FLAGS...]}"
prefix="${2:?usage: compare.sh CONFIG WORKDIR_PREFIX [FLAGS...]}"
shift 2
python -m dblocks_jax.main --config="${config}" --workdir="${prefix}_dblocks" "$@"
python -m dblocks_jax.main --config="${config}:e2e" --workdir="${prefix}_e2e" "$@"
for run in dblocks e2e; do
  printf '%-8s %s\n' "${run}" "$(cat "${prefix}_${run}/eval.json")"
done
