#!/usr/bin/env bash
# `make container-test`: build the image with podman on this machine, start it, index the
# built-in sample (9 originals by the container's CLI, 36 edited copies through the API), search
# over HTTP, check the answer, stop and remove everything. Prints what it did, with timings.
#
# No registry is reachable here, so the base is a local Debian (debootstrap, cached), and
# podman needs runc plus fixed ulimits on this kernel (crun fails on its cgroups).
#   IMAGE=localhost/imagefinder:test  BASE_IMAGE=localhost/debian-bookworm:min
#   CACHE=~/.cache/imagefinder-container (debootstrap tarball)  TORCH_WHEELS=/opt/wheels
set -euo pipefail
# a failing command names itself (set -e alone ends the run silently)
trap 'echo "container-test: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-localhost/imagefinder:test}
BASE_IMAGE=${BASE_IMAGE:-localhost/debian-bookworm:min}
CACHE=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/imagefinder-container}
TORCH_WHEELS=${TORCH_WHEELS:-/opt/wheels}
PYTHON=${PYTHON:-.venv/bin/python}
FLAGS=(--runtime /usr/sbin/runc)
# podman logs an error per container about healthcheck timers when there is no systemd: noise here
exec 2> >(grep --line-buffered -v 'unable to get systemd connection' >&2)
LIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024 --network host)
NAME=imagefinder-test-$$
VOLUME=imagefinder-test-data-$$
T0=$SECONDS

step() { printf '\n[%4ds] == %s\n' "$((SECONDS - T0))" "$*"; }
SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"

step "tools: podman, runc, debootstrap"
missing=()
for tool in podman:podman runc:runc debootstrap:debootstrap; do
  command -v "${tool%%:*}" >/dev/null || [[ -x /usr/sbin/${tool%%:*} ]] || missing+=("${tool##*:}")
done
if ((${#missing[@]})); then
  echo "installing ${missing[*]} (apt)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
podman --version

step "base image $BASE_IMAGE"
if podman image exists "$BASE_IMAGE"; then
  echo "exists: skipped"
else
  mkdir -p "$CACHE"
  if [[ ! -s "$CACHE/bookworm-minbase.tar" ]]; then
    # the Debian mirror apt itself uses (deb822 .sources or a classic sources.list)
    # (either file may be missing: grep's exit status must not end the script under pipefail)
    mirror=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
             | grep -E '^(URIs:|deb )' | grep -v security | sed -E 's/^deb (\[[^]]*\] )?//; s/^URIs: *//' \
             | awk 'NR == 1 {print $1}' || true)
    mirror=${MIRROR:-${mirror:-http://deb.debian.org/debian}}
    echo "debootstrap --variant=minbase bookworm from $mirror"
    rm -rf "$CACHE/rootfs"
    $SUDO debootstrap --variant=minbase bookworm "$CACHE/rootfs" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
      || { tail -20 "$CACHE/debootstrap.log"; exit 1; }
    $SUDO tar -C "$CACHE/rootfs" -cf "$CACHE/bookworm-minbase.tar.tmp" .
    mv "$CACHE/bookworm-minbase.tar.tmp" "$CACHE/bookworm-minbase.tar"
    $SUDO rm -rf "$CACHE/rootfs"
  else
    echo "cached rootfs: $CACHE/bookworm-minbase.tar"
  fi
  podman import "$CACHE/bookworm-minbase.tar" "$BASE_IMAGE" >/dev/null
  echo "imported"
fi

step "build $IMAGE"
build=(--build-arg BASE="$BASE_IMAGE" --format docker)
wheel=$(ls "$TORCH_WHEELS"/torch-*.whl 2>/dev/null | head -1 || true)
if [[ -n "$wheel" ]]; then  # this machine's CPU torch wheel instead of PyTorch's index
  ln -f "$wheel" deploy/wheels/ 2>/dev/null || cp -u "$wheel" deploy/wheels/
  build+=(--build-arg PIP_EXTRA_INDEX_URL=)
  echo "torch from $wheel"
fi
ca=/etc/ssl/certs/ca-certificates.crt  # this machine reaches PyPI through a TLS-inspecting proxy
[[ -f "$ca" ]] && build+=(-v "$ca:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
t=$SECONDS
podman "${FLAGS[@]}" build "${LIMITS[@]}" "${build[@]}" -f Containerfile -t "$IMAGE" . >"$CACHE/build.log" 2>&1 \
  || { tail -40 "$CACHE/build.log"; exit 1; }
echo "built in $((SECONDS - t)) s ($(grep -c -- '--> Using cache' "$CACHE/build.log" || true) steps from cache);" \
     "size $(podman image inspect "$IMAGE" --format '{{.Size}}' | awk '{printf "%.2f GB", $1/1e9}')"

cleanup() {
  podman "${FLAGS[@]}" rm -f -t 20 "$NAME" >/dev/null 2>&1 || true
  podman volume rm -f "$VOLUME" >/dev/null 2>&1 || true
}
trap cleanup EXIT

step "index the 9 sample originals with the container's CLI (volume $VOLUME)"
podman volume create "$VOLUME" >/dev/null
t=$SECONDS
# the ONNX exports in /cache (made at build time) must be the same files, untouched, afterwards
out=$(podman "${FLAGS[@]}" run --rm "${LIMITS[@]}" --no-healthcheck -v "$VOLUME:/data" "$IMAGE" sh -c \
  'models() { find /cache -name "*.onnx" -printf "%p %s %T@\n" | sort; }
   before=$(models); ls /cache/sample/images/*_original.jpg > /data/originals.txt &&
   imagefinder index /data/originals.txt --out /data/index --json -q 2>&1 &&
   echo "onnx files: $(echo "$before" | grep -c onnx)" &&
   if [ -n "$before" ] && [ "$before" = "$(models)" ]; then echo "exports: unchanged"; fi')
echo "$out" | sed 's/^/     /'
echo "$out" | grep -q '"indexed": 9' || { echo "FAIL: expected 9 indexed"; exit 1; }
echo "$out" | grep -q 'exports: unchanged' || { echo "FAIL: ONNX exports missing or made at run time"; exit 1; }
echo "ok   9 indexed in $((SECONDS - t)) s; the ONNX exports made at build time were used as they are"

read -r API_PORT WEB_PORT < <("$PYTHON" -c 'import socket
s = [socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
step "start the API (127.0.0.1:$API_PORT) and web page (127.0.0.1:$WEB_PORT)"
t=$SECONDS
# --health-interval=disable: no systemd here to time the checks; `healthcheck run` below runs it once
podman "${FLAGS[@]}" run -d --name "$NAME" "${LIMITS[@]}" --health-interval=disable -v "$VOLUME:/data" \
  -e IMAGEFINDER_INDEX=/data/index -e IMAGEFINDER_API_PORT="$API_PORT" -e IMAGEFINDER_WEB_PORT="$WEB_PORT" \
  "$IMAGE" sh -c 'exec python -m imagefinder.serve --host 127.0.0.1 --api-port "$IMAGEFINDER_API_PORT" \
                  --web-port "$IMAGEFINDER_WEB_PORT"' >/dev/null
for _ in $(seq 1 180); do
  curl -fsS "http://127.0.0.1:$WEB_PORT/healthz" >/dev/null 2>&1 && break
  [[ "$(podman inspect -f '{{.State.Running}}' "$NAME")" == true ]] || { podman logs "$NAME" | tail -30; exit 1; }
  sleep 1
done
curl -fsS "http://127.0.0.1:$API_PORT/health"; echo
echo "ready in $((SECONDS - t)) s"
podman "${FLAGS[@]}" healthcheck run "$NAME" && echo "ok   HEALTHCHECK passes"
ss -ltn | awk -v a="$API_PORT" -v w="$WEB_PORT" '$4 ~ ":"a"$" || $4 ~ ":"w"$" {print "     listening " $4}'
if ss -ltn | awk '{print $4}' | grep -E "^(0\.0\.0\.0|\*|\[::\]):($API_PORT|$WEB_PORT)$"; then
  echo "FAIL: listening beyond 127.0.0.1"; exit 1
fi

step "through the API: add the 36 edited copies, search, check"
PYTHONPATH=$PWD/src "$PYTHON" scripts/container_check.py --api "http://127.0.0.1:$API_PORT" \
  --web "http://127.0.0.1:$WEB_PORT"
podman exec "$NAME" id | sed 's/^/     runs as: /'

step "stop and remove"
t=$SECONDS
podman "${FLAGS[@]}" stop -t 20 "$NAME" >/dev/null
echo "stopped in $((SECONDS - t)) s (exit code $(podman inspect -f '{{.State.ExitCode}}' "$NAME"))"
cleanup
trap - EXIT
podman ps -a --filter "name=$NAME" --format '{{.Names}}' | grep -q . && { echo "FAIL: container left"; exit 1; }
echo "removed container $NAME and volume $VOLUME"
step "container-test passed in $((SECONDS - T0)) s"
