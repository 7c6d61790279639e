#!/usr/bin/env bash
# Build the serving image from the Dockerfile and check that it serves, on a machine with no Docker
# engine and no reachable container registry (only Debian's mirror and PyPI):
#
#   sudo scripts/container-check.sh [--tag IMAGE] [--port PORT] [--build-arg K=V]... [--env K=V]...
#
# The service gets PIXELSERVE_HOST=127.0.0.1 and PIXELSERVE_PORT=PORT (default 8000); --env adds settings.
#
#   1. base:  `FROM python:3.11-slim` cannot be pulled, so a stand-in is made once with debootstrap
#             (Debian bookworm's Python 3.11, pip, venv, CA certificates) and imported under that name;
#   2. build: buildah, chroot isolation, --pull-never, docker format (keeps HEALTHCHECK);
#   3. run:   the image's own command in a buildah working container on the host's network, until
#             /v2/health/ready answers 200; then the image's HEALTHCHECK once, and the service's uid;
#   4. stop:  SIGTERM, as `docker stop` sends it; the service must exit within 10 s.
#
# Prints one `check: NAME ok|FAIL ...` line per check and exits 1 on the first failure.
# chroot isolation has no network, PID or user namespace: the service listens on the host's loopback
# (give it a free --port) and runs as a host process under the image's uid.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TAG=localhost/pixelserve:check
PORT=8000
TIMEOUT=120
BUILD_ARGS=()
RUN_ENV=()
CACHE=${PIXELSERVE_CONTAINER_CACHE:-/var/tmp/pixelserve-container-check}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
STANDIN=localhost/python:3.11-slim
STANDIN_RECIPE=1  # bump when the stand-in's recipe below changes

while [[ $# -gt 0 ]]; do
  case $1 in
    --tag) TAG=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --build-arg) BUILD_ARGS+=(--build-arg "$2"); shift 2 ;;
    --env) RUN_ENV+=(--env "$2"); shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

# Loopback only, on the checked port (chroot isolation shares the host's network); --env may add more.
RUN_ENV=(--env PIXELSERVE_HOST=127.0.0.1 --env "PIXELSERVE_PORT=$PORT" "${RUN_ENV[@]}")

fail() { echo "check: $1 FAIL: $2" >&2; exit 1; }
ok() { echo "check: $1 ok${2:+ ($2)}"; }
[[ $(id -u) -eq 0 ]] || fail setup "needs root (buildah chroot isolation, debootstrap)"
for tool in buildah podman debootstrap curl python3; do
  command -v "$tool" >/dev/null || fail setup "$tool is missing: scripts/install-system-deps.sh installs it"
done
mkdir -p "$CACHE"
find "$CACHE" -maxdepth 1 -name 'run.*' -mtime +7 -exec rm -rf {} +  # logs of runs a week old
LOG=$(mktemp -d "$CACHE/run.XXXXXX")
echo "logs: $LOG"

# --------------------------------------------------------------------------- 1. base
standin_recipe() { buildah inspect --type image --format '{{index .Docker.Config.Labels "pixelserve.standin"}}' "$STANDIN" 2>/dev/null || true; }
build_standin() {
  local rootfs=$CACHE/rootfs
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates,netbase,tzdata \
    "$SUITE" "$rootfs" "$MIRROR" >"$LOG/debootstrap.log" 2>&1 || { tail -20 "$LOG/debootstrap.log"; return 1; }
  # Like the official image: pip may install as root, and python/pip are on PATH in /usr/local/bin.
  rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
  ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
  printf '#!/bin/sh\nexec python3 -m pip "$@"\n' >"$rootfs/usr/local/bin/pip" && chmod 755 "$rootfs/usr/local/bin/pip"
  # This host may reach PyPI through a TLS-intercepting proxy: trust its extra CAs, for pip's too.
  cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
  chroot "$rootfs" update-ca-certificates >>"$LOG/debootstrap.log" 2>&1
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$rootfs/etc/pip.conf"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar --numeric-owner -C "$rootfs" -c . | podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
    --change "LABEL pixelserve.standin=$STANDIN_RECIPE" - "$STANDIN" >>"$LOG/debootstrap.log" 2>&1
  buildah tag "$STANDIN" docker.io/library/python:3.11-slim && rm -rf "$rootfs"
}
started=$SECONDS
exec 9>"$CACHE/base.lock"; flock 9  # one stand-in build at a time
if [[ $(standin_recipe) == "$STANDIN_RECIPE" ]]; then
  ok base "stand-in $STANDIN cached"
else
  build_standin || fail base "debootstrap of the python:3.11-slim stand-in failed (log: $LOG/debootstrap.log)"
  ok base "stand-in $STANDIN built from Debian $SUITE in $((SECONDS - started)) s"
fi
flock -u 9

# --------------------------------------------------------------------------- 2. build
started=$SECONDS
buildah bud --isolation chroot --pull-never --format docker --layers "${BUILD_ARGS[@]}" \
  -f "$ROOT/Dockerfile" -t "$TAG" "$ROOT" >"$LOG/build.log" 2>&1 \
  || { tail -40 "$LOG/build.log" >&2; fail build "buildah bud failed (log: $LOG/build.log)"; }
ok build "$TAG in $((SECONDS - started)) s"

# --------------------------------------------------------------------------- 3. run
image_field() {  # a field of the image's config as JSON (Cmd, Entrypoint, Healthcheck, User ...)
  buildah inspect --type image "$TAG" | python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)["Docker"]["config"].get(sys.argv[1])))' "$1"
}
json_words() { python3 -c 'import json, sys; print("\0".join(json.loads(sys.argv[1]) or []), end="")' "$1"; }
mapfile -d '' COMMAND < <(json_words "$(image_field Entrypoint)"; json_words "$(image_field Cmd)")
mapfile -d '' HEALTHCHECK < <(json_words "$(python3 -c 'import json, sys; h = json.loads(sys.argv[1]) or {}; print(json.dumps(h.get("Test", [])[1:] if h.get("Test", [""])[0] == "CMD" else []))' "$(image_field Healthcheck)")")
USER_NAME=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1]) or "root")' "$(image_field User)")
[[ ${#COMMAND[@]} -gt 0 ]] || fail run "the image has no ENTRYPOINT/CMD"
if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/"; then fail run "port $PORT is already taken"; fi

CONTAINER=$(buildah from --pull=never --isolation chroot "$TAG")
SERVICE=
cleanup() {
  if [[ -n $SERVICE ]] && kill -0 "$SERVICE" 2>/dev/null; then kill -KILL -- "-$SERVICE" 2>/dev/null || true; fi
  buildah rm "$CONTAINER" >/dev/null 2>&1 || true
}
trap cleanup EXIT
started=$SECONDS
# setsid: the service gets a process group of its own, so that it can be stopped (and killed) as a whole.
setsid buildah run --isolation chroot "${RUN_ENV[@]}" "$CONTAINER" -- "${COMMAND[@]}" \
  </dev/null >"$LOG/service.log" 2>&1 &
SERVICE=$!
until [[ $(curl -s -o "$LOG/ready.body" -w '%{http_code}' --max-time 3 "http://127.0.0.1:$PORT/v2/health/ready") == 200 ]]; do
  kill -0 "$SERVICE" 2>/dev/null || { tail -30 "$LOG/service.log" >&2; fail run "the service exited before it was ready"; }
  (( SECONDS - started < TIMEOUT )) || { tail -30 "$LOG/service.log" >&2; fail run "not ready within $TIMEOUT s"; }
  sleep 0.5
done
ok ready "http://127.0.0.1:$PORT/v2/health/ready -> 200 after $((SECONDS - started)) s"

if [[ ${#HEALTHCHECK[@]} -gt 0 ]]; then
  timeout 60 buildah run --isolation chroot "${RUN_ENV[@]}" "$CONTAINER" -- "${HEALTHCHECK[@]}" >"$LOG/healthcheck.log" 2>&1 \
    || { cat "$LOG/healthcheck.log" >&2; fail healthcheck "the image's HEALTHCHECK failed"; }
  ok healthcheck "exit 0"
else
  fail healthcheck "the image declares no HEALTHCHECK"
fi

# The python processes under buildah run, by uid: USER must hold (chroot isolation switches uid).
service_processes() { ps -eo pid=,pgid=,uid=,comm= --sort=pid | awk -v group="$SERVICE" '$2 == group && $4 ~ /^python/'; }
uids=$(service_processes | awk '{ print $3 }' | sort -u | paste -sd ' ')
[[ -n $uids && " $uids " != *" 0 "* ]] || fail user "the service runs as uid(s) '${uids:-none}', not the image's USER $USER_NAME"
ok user "USER $USER_NAME, uid(s) $uids"

# --------------------------------------------------------------------------- 4. stop
# SIGTERM to the image's command itself (the first python process), as `docker stop` sends it to PID 1;
# buildah run then exits with the service's status.
main=$(service_processes | awk 'NR == 1 { print $1 }')
started=$SECONDS
kill -TERM "$main"
while kill -0 "$SERVICE" 2>/dev/null && (( SECONDS - started < 10 )); do sleep 0.2; done
kill -0 "$SERVICE" 2>/dev/null && fail stop "still running 10 s after SIGTERM"
wait "$SERVICE" && status=0 || status=$?
SERVICE=
[[ $status -eq 0 ]] || { tail -5 "$LOG/service.log" >&2; fail stop "exit status $status after SIGTERM, not 0"; }
ok stop "exit status 0 $((SECONDS - started)) s after SIGTERM"
echo "check: PASS $TAG"
