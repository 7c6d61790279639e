#!/usr/bin/env bash
# Reproduce the shipped models in models/, one after the other (about 30 minutes on 2 CPU cores, plus the
# photo pools of the convnets' fine-tuning: about 10 minutes each the first time, then cached in data/photo-mix/).
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
# Then the convnets learn what serving produces from photos (docs/photos.md): the version just trained is
# fine-tuned on a mix of clean pictures and synthetic photos run through the service's preprocessing,
# published as the next version.
declare -A PHOTO_RECIPES=(
  [mnist-convnet]="--dataset mnist --arch lenet5 --epochs 4 --lr 3e-4 --shift 2 --photo-mix 0.3 --photo-pool 1000"
  [fashion-convnet]="--dataset fashion-mnist --arch convnet --channels 16,32 --dropout 0.1 --epochs 2 --lr 3e-4 --shift 1 --hflip --photo-mix 0.15 --photo-pool 1200"
)

# With REAL_PHOTOS=DIR (github.com/alexeygrigorev/clothing-dataset-small, see docs/photos.md), fashion-convnet is
# then fine-tuned once more, also on real phone photos of clothes run through the service's preprocessing
# (training/real_clothes.py; processed once and cached in data/real-clothes/).
declare -A REAL_RECIPES=(
  [fashion-convnet]="--dataset fashion-mnist --arch convnet --channels 16,32 --dropout 0.1 --epochs 3 --lr 3e-4 --shift 1 --hflip --photo-mix 0.15 --photo-pool 1200 --real-mix 0.1"
)
REAL_PHOTOS=${REAL_PHOTOS:-}

# Last, the typicality of the version each chain ends with is refitted in place on what serving makes of its pictures
# (synthetic photos, enlarged uploads; with REAL_PHOTOS, the real photos fashion-convnet learned from), with the
# members each shipped card records in typicality.fit_options (docs/trust.md).
declare -A TYPICALITY=(
  [mnist-convnet]="--layers input --components 64 --no-within --statistics --energy --no-extent --outlier-exposure"
  [mnist-mlp]="--layers input --components 64 --no-within --statistics --energy --no-extent --outlier-exposure"
  [fashion-mlp]="--layers penultimate --components 128 --directions 64 --within --no-statistics --no-energy --extent --outlier-exposure"
  [fashion-convnet]="--layers input --components 128 --within --statistics --no-energy --extent --outlier-exposure"
)

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
  published=$("$PY" -m training train ${RECIPES[$name]} --name "$name" --models-dir "$MODELS_DIR" --no-progress | tee /dev/stderr)
  if [ -n "${PHOTO_RECIPES[$name]+set}" ]; then
    base=$(sed -n 's/^published \([^:]*\):.*/\1/p' <<<"$published")
    echo "== $name: fine-tuned on processed photos from $base"
    # shellcheck disable=SC2086
    published=$("$PY" -m training train ${PHOTO_RECIPES[$name]} --init-from "$base/model.onnx" --name "$name" \
      --models-dir "$MODELS_DIR" --no-progress | tee /dev/stderr)
  fi
  if [ -n "$REAL_PHOTOS" ] && [ -n "${REAL_RECIPES[$name]+set}" ]; then
    base=$(sed -n 's/^published \([^:]*\):.*/\1/p' <<<"$published")
    echo "== $name: fine-tuned on real photos of clothes from $base"
    # shellcheck disable=SC2086
    published=$("$PY" -m training train ${REAL_RECIPES[$name]} --real-photos "$REAL_PHOTOS" --init-from "$base/model.onnx" \
      --name "$name" --models-dir "$MODELS_DIR" --no-progress | tee /dev/stderr)
    real=(--real-photos "$REAL_PHOTOS")
  else
    real=()
  fi
  last=$(sed -n 's/^published \([^:]*\):.*/\1/p' <<<"$published")
  echo "== $name: typicality of $last refitted on served pictures"
  # shellcheck disable=SC2086
  "$PY" -m training calibrate "$last" --refit-typicality ${TYPICALITY[$name]} "${real[@]}"
done
