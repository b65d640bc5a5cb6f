#!/usr/bin/env bash
# Deploy target "runner", the zero-secret default: run the pushed image on the workflow's own runner.
# Usage: runner.sh staging|production, with FORKCAST_IMAGE=repository@sha256:... (and FORKCAST_MODEL).
# FORKCAST_PORT and FORKCAST_CONTAINER override the port and the container's name (the tests use them).
# FORKCAST_API_TOKEN, when set, is handed to the service by name (its value never on a command line).
# Prints `url=...` on stdout (for $GITHUB_OUTPUT); everything else goes to stderr.
set -euo pipefail

environment=${1:?usage: runner.sh staging|production}
: "${FORKCAST_IMAGE:?FORKCAST_IMAGE is empty: the runner target runs the image the build job pushed}"
case "$environment" in
  staging) port=${FORKCAST_PORT:-3101} ;;     # serve.staging_port in params.yaml
  production) port=${FORKCAST_PORT:-3102} ;;  # serve.production_port
  *) echo "unknown environment '$environment': staging or production" >&2; exit 2 ;;
esac

name=${FORKCAST_CONTAINER:-forkcast-$environment}
docker rm --force "$name" >/dev/null 2>&1 || true
if ! docker image inspect "$FORKCAST_IMAGE" >/dev/null 2>&1; then  # built on this machine: nothing to pull
  docker pull --quiet "$FORKCAST_IMAGE" >&2
fi
docker run --detach --name "$name" --publish "127.0.0.1:$port:3000" \
  --env FORKCAST_ENVIRONMENT="$environment" \
  --env FORKCAST_MODEL_TAG="${FORKCAST_MODEL:-}" \
  --env OMP_NUM_THREADS=1 \
  --env FORKCAST_API_TOKEN \
  --env BENTOML_DO_NOT_TRACK=True \
  "$FORKCAST_IMAGE" >&2

for _ in $(seq 180); do
  if curl --silent --fail --max-time 2 "http://127.0.0.1:$port/readyz" >/dev/null; then
    echo "$name serves $FORKCAST_IMAGE on port $port" >&2
    echo "url=http://127.0.0.1:$port"
    exit 0
  fi
  [ "$(docker inspect --format '{{.State.Running}}' "$name")" = true ] || break
  sleep 1
done
echo "$name did not become ready; the end of its log:" >&2
docker logs --tail 60 "$name" >&2
exit 1
