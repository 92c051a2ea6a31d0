#!/usr/bin/env bash
# Load: N simulated devices go through factory -> sale -> claim -> enrollment
# against a running custody-dev (make dev). Prints enrollments/s, p50/p99
# from the device's first enrollment attempt to its certificate, and the
# custody-dev process's peak memory (manager, gateway, cert-manager and the
# client side share that process; kube-apiserver and etcd are separate).
# Usage: hack/load.sh [N] [CONCURRENCY] [DATA_DIR]
set -euo pipefail
n=${1:-50}; conc=${2:-8}; data=${3:-.custody-dev}
export KUBECONFIG=$data/kubeconfig
bin=$(mktemp -d); work=$(mktemp -d); trap 'rm -rf "$bin" "$work"' EXIT
go build -o "$bin/custody-device" ./cmd/custody-device
kubectl apply -f config/samples/tenant.yaml >/dev/null
kubectl wait tenant/acme --for=condition=Ready --timeout=2m >/dev/null
run=$(date +%s)
for i in $(seq 1 "$n"); do
  s="LD-$run-$i"
  "$bin/custody-device" init --model LOAD --serial "$s" --dir "$work/devices/$s" >/dev/null
  code=$(awk -F': *' '/Claim code/ {print $2}' "$work/devices/$s/label.txt")
  cat "$work/devices/$s/device.yaml" >> "$work/devices.yaml"; echo --- >> "$work/devices.yaml"
  lower=$(echo "$s" | tr A-Z a-z)
  cat >> "$work/claims.yaml" <<YAML
apiVersion: v1
kind: Secret
metadata: {name: $lower, namespace: acme}
stringData: {code: "$code"}
---
apiVersion: custody.dev/v1alpha1
kind: Claim
metadata: {name: $lower, namespace: acme}
spec: {serialNumber: $s, model: LOAD, claimCode: {secretRef: {name: $lower}}}
---
YAML
done
kubectl apply -f "$work/devices.yaml" >/dev/null
kubectl apply -f "$work/claims.yaml" >/dev/null
"$bin/custody-device" simulate --count "$n" --concurrency "$conc" --dir "$work/devices" \
  --gateway "$(cat "$data/gateway-url")" --gateway-ca "$data/gateway-ca.crt"
pid=$(pgrep -f 'custody-dev' | head -1 || true)
[ -n "$pid" ] && grep VmHWM "/proc/$pid/status" | sed 's/^/custody-dev peak memory: /'
