#!/usr/bin/env bash
# Trains a config block-wise and end to end (same number of layer
# evaluations) and prints both results, step memory and wall time side by
# side (--mode=compare). Extra arguments go to both runs.
#
#   bash launch/compare.sh configs/vit_fashion_mnist.py runs/fm [--config.seed=1]
set -euo pipefail
config="${1:?usage: compare.sh CONFIG WORKDIR [FLAGS...]}"
workdir="${2:?usage: compare.sh CONFIG WORKDIR [FLAGS...]}"
shift 2
python -m dblocks_jax.main --config="${config}" --workdir="${workdir}" --mode=compare "$@"
