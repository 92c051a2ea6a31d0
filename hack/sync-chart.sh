#!/usr/bin/env bash
# Copies the generated and shared manifests into the Helm chart
# (charts/custody/files), which renders them with the release's namespace
# and labels: the CRDs, the RBAC of config/rbac, the webhook configuration
# with its match conditions, the alert rules and the Grafana dashboard. config/ stays the source; `make
# manifests` runs this, and `make verify` fails when the copies differ.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dst=$root/charts/custody/files
rm -rf "$dst/crds" "$dst/rbac" "$dst/webhook" "$dst/prometheus" "$dst/grafana"
mkdir -p "$dst/crds" "$dst/rbac" "$dst/webhook" "$dst/prometheus" "$dst/grafana"
install -m 0644 "$root"/config/crd/bases/*.yaml "$dst/crds/"
for f in "$root"/config/rbac/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || install -m 0644 "$f" "$dst/rbac/"
done
install -m 0644 "$root/config/webhook/manifests.yaml" "$root/config/webhook/match_conditions.yaml" "$dst/webhook/"
install -m 0644 "$root/config/prometheus/custody.rules.yaml" "$dst/prometheus/"
install -m 0644 "$root/config/grafana/custody.json" "$dst/grafana/"
