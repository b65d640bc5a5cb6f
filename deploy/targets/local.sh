#!/usr/bin/env bash
# Deploy target "local": serve the bento with `forkcast deploy` on this machine, no container engine needed.
# For `act` and machines without docker. Staging only: production runs an image (runner or a real target).
# Usage: local.sh staging, with FORKCAST_BENTO set; reads the bento from outputs/release/bento.bento.
# Prints `url=...` on stdout (for $GITHUB_OUTPUT); everything else goes to stderr.
set -euo pipefail

environment=${1:?usage: local.sh staging}
: "${FORKCAST_BENTO:?FORKCAST_BENTO is empty: the local target serves the bento the build job made}"
if [ "$environment" != staging ]; then
  echo "the local target serves staging only; production needs FORKCAST_DEPLOY_TARGET=runner or a real target" >&2
  exit 2
fi

export BENTOML_HOME="$PWD/.bentoml"
if ! bentoml get "$FORKCAST_BENTO" >/dev/null 2>&1; then
  bentoml import "$PWD/outputs/release/bento.bento" >&2
fi
forkcast deploy --env "$environment" --bento "$FORKCAST_BENTO" >&2
python -c 'import json, sys; print("url=" + json.load(open(sys.argv[1]))["url"])' "outputs/deploy/$environment.json"
