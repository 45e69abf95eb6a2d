#!/usr/bin/env bash
# What the Docker tests need on the machine: Debian's docker.io, debootstrap and
# docker-registry (installed when missing, as root), and the Debian base image's root
# filesystem, made once (cached in ~/.cache/pneumo-tests) outside pytest's per-test timeout.
# `prerequisites.sh warm` also builds the worker image into the engine's kept layer cache,
# as `prefect deploy`'s build step will (tests/docker/engine.py); .ci/run starts it beside
# the main suite.
set -euo pipefail
cd "$(dirname "$0")/../.."
missing=()
for tool in dockerd:docker.io debootstrap:debootstrap docker-registry:docker-registry; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if ((${#missing[@]})) && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
python3 -m tests.docker.engine base-tarball || [ "${CI:-}" != true ]
if [ "${1:-}" = warm ]; then
  python3 -m tests.docker.engine warm || [ "${CI:-}" != true ]
fi
