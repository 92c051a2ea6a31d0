#!/usr/bin/env bash
# Checks that the control-plane versions compiled into internal/controlplane
# match the versions pinned in hack/tools.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
kube=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$root/hack/tools/kube-apiserver/go.mod")
etcd=$(awk '$1 == "require" && $2 == "go.etcd.io/etcd/server/v3" {print $3}' "$root/hack/tools/etcd/go.mod")
grep -q "KubeAPIServerVersion = \"$kube\"" "$root/internal/controlplane/assets.go" || { echo "internal/controlplane/assets.go: KubeAPIServerVersion is not $kube"; exit 1; }
grep -q "EtcdVersion          = \"$etcd\"" "$root/internal/controlplane/assets.go" || { echo "internal/controlplane/assets.go: EtcdVersion is not $etcd"; exit 1; }
