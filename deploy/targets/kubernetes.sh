#!/usr/bin/env bash
# Deploy target "kubernetes": apply deploy/k8s/overlays/ENV with the release's digest to the cluster of the
# kubeconfig, wait for the rollout, smoke-test, and roll back automatically when either fails
# (`forkcast target kubernetes`; `--dry-run` there prints the manifests).
# Usage: kubernetes.sh staging|production, with FORKCAST_IMAGE=repository@sha256:..., and optionally
# FORKCAST_KUBECONFIG (a kubeconfig's contents, from a secret; else kubectl's own KUBECONFIG), FORKCAST_URL (where
# users reach the service) and FORKCAST_GOLDEN (the known answers; default outputs/build/golden.json).
# Prints `url=...` and `smoked=true` on stdout (for $GITHUB_OUTPUT); everything else goes to stderr.
set -euo pipefail

environment=${1:?usage: kubernetes.sh staging|production}
: "${FORKCAST_IMAGE:?FORKCAST_IMAGE is empty: the kubernetes target deploys the image the build job pushed}"

if [ -n "${FORKCAST_KUBECONFIG:-}" ]; then
  config=$(mktemp)
  trap 'rm -f "$config"' EXIT
  chmod 600 "$config"
  printf '%s\n' "$FORKCAST_KUBECONFIG" > "$config"
  export KUBECONFIG="$config"
fi

args=(--env "$environment" --image "$FORKCAST_IMAGE" --golden "${FORKCAST_GOLDEN:-outputs/build/golden.json}")
if [ -n "${FORKCAST_URL:-}" ]; then
  args+=(--url "$FORKCAST_URL")
fi
forkcast target kubernetes "${args[@]}"
