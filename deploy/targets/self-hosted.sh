#!/usr/bin/env bash
# Deploy target "self-hosted": a machine of your own, registered as a GitHub self-hosted runner labelled
# forkcast-staging / forkcast-production, runs the image under docker (`forkcast target self-hosted`): restart
# policy, health check, inference log in the volume forkcast-<environment>-inference, and the previous container
# kept until the new one passes its smoke tests (put back when it does not).
# Usage: self-hosted.sh staging|production, with FORKCAST_IMAGE=repository@sha256:... (and FORKCAST_MODEL);
# FORKCAST_URL: where users reach it (default http://127.0.0.1:<port>); FORKCAST_GOLDEN: the known answers.
# FORKCAST_PORT and FORKCAST_CONTAINER override the port (params.yaml serve.*_port) and the container's name.
# Prints `url=...` and `smoked=true` on stdout (for $GITHUB_OUTPUT); everything else goes to stderr.
set -euo pipefail

environment=${1:?usage: self-hosted.sh staging|production}
: "${FORKCAST_IMAGE:?FORKCAST_IMAGE is empty: the self-hosted target runs the image the build job pushed}"
arguments=(--env "$environment" --image "$FORKCAST_IMAGE" --golden "${FORKCAST_GOLDEN:-outputs/build/golden.json}")
[ -z "${FORKCAST_URL:-}" ] || arguments+=(--url "$FORKCAST_URL")
[ -z "${FORKCAST_PORT:-}" ] || arguments+=(--port "$FORKCAST_PORT")
[ -z "${FORKCAST_CONTAINER:-}" ] || arguments+=(--name "$FORKCAST_CONTAINER")
exec forkcast target self-hosted "${arguments[@]}"
