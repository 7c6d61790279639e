#!/usr/bin/env bash
# Reproduce the shipped models in models/, one after the other (about 30 minutes on 2 CPU cores).
#   scripts/train-shipped-models.sh                  # all four
#   scripts/train-shipped-models.sh fashion-mlp      # only the named ones
# Each run publishes the next free version (models/<name>/<n>/); remove models/<name>/ first to
# rebuild version 1. MODELS_DIR=... publishes elsewhere; PY=... picks the Python (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MODELS_DIR=${MODELS_DIR:-models}

declare -A RECIPES=(
  [mnist-convnet]="--dataset mnist --arch lenet5 --epochs 30 --shift 2 --patience 10"
  [mnist-mlp]="--dataset mnist --arch mlp --hidden 512,256 --dropout 0.3 --epochs 40 --shift 2 --patience 10"
  [fashion-mlp]="--dataset fashion-mnist --arch mlp --hidden 1024,512 --dropout 0.3 --lr 1e-3 --epochs 40 --hflip --patience 10"
  [fashion-convnet]="--dataset fashion-mnist --arch convnet --channels 16,32 --dropout 0.1 --epochs 24 --shift 1 --hflip --patience 6"
)
ORDER=(mnist-convnet mnist-mlp fashion-mlp fashion-convnet)

names=("$@")
[ ${#names[@]} -eq 0 ] && names=("${ORDER[@]}")
for name in "${names[@]}"; do
  if [ -z "${RECIPES[$name]+set}" ]; then
    echo "unknown model $name; shipped models: ${ORDER[*]}" >&2
    exit 2
  fi
done
for name in "${names[@]}"; do
  echo "== $name"
  # shellcheck disable=SC2086  # the recipe is a list of options
  "$PY" -m training train ${RECIPES[$name]} --name "$name" --models-dir "$MODELS_DIR" --no-progress
done
