#!/usr/bin/env bash
# Debian packages the tests and training need: Fashion-MNIST, Chromium for the browser tests,
# wrk for the benchmark, buildah/podman/debootstrap for the container build check, docker-compose
# to validate the compose file against the Compose specification, DejaVu fonts for the symbols and letters drawn by
# training/doodles.py and bench/ood_sets.py.
set -euo pipefail
packages=(dataset-fashion-mnist chromium wrk buildah podman debootstrap curl docker-compose fonts-dejavu-core)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "installing Debian packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
