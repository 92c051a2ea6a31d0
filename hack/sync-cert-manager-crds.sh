#!/usr/bin/env bash
# Copies the CRDs of the cert-manager version in go.mod into
# config/third_party/cert-manager, so that tests and custody-dev install
# exactly the CRDs of the controllers they run.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src=$(cd "$root" && go list -m -f '{{.Dir}}' github.com/cert-manager/cert-manager)/deploy/crds
dst=$root/config/third_party/cert-manager
for crd in certificaterequests certificates clusterissuers issuers; do
  install -m 0644 "$src/cert-manager.io_$crd.yaml" "$dst/cert-manager.io_$crd.yaml"
done
