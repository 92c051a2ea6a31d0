#!/usr/bin/env bash
# Load: N simulated devices go through factory -> sale -> claim -> enrollment
# against a running custody-dev (make dev), with the device gateway running
# as its own custody-gateway process so that its memory is measured apart.
#
#  1. N devices are made (custody-device init) and applied as the ERP would.
#  2. N claim-code Secrets and Claims are created; from the API server's
#     timestamps (1 s resolution): claims bound per second (first creation to
#     last status.boundAt) and claim-to-bound p50/p99.
#  3. custody-device simulate enrolls the N bound devices through the
#     gateway, CONCURRENCY at a time, honouring Retry-After as devices do:
#     enrollments/s and challenge-to-certificate p50/p99 (ms resolution).
#     A device that is online when its claim binds gets its certificate
#     within claim-to-bound + the NotBound retry (15 s) + that latency.
#  4. With the data plane (custody-dev writes mqtt-url), every enrolled
#     device connects over MQTT with its certificate (through Custody's auth
#     callout) and publishes telemetry every LOAD_PUBLISH_INTERVAL (1s) for
#     LOAD_PUBLISH_DURATION (20s): connections made, messages/s.
#  5. Peak resident memory (VmHWM) of the custody-dev process (manager and
#     cert-manager's controllers; its own gateway stays idle) and of the
#     custody-gateway process. kube-apiserver and etcd are not counted.
#
# Every simulated device comes from 127.0.0.1, so the gateway runs with its
# per-client limit lifted (it would otherwise throttle them as one client).
# Usage: hack/load.sh [N] [CONCURRENCY] [DATA_DIR]
set -euo pipefail
n=${1:-50}; conc=${2:-8}; data=${3:-.custody-dev}
export KUBECONFIG=$data/kubeconfig
bin=$(mktemp -d); work=$(mktemp -d)
gw_pid=
cleanup() { [ -n "$gw_pid" ] && kill "$gw_pid" 2>/dev/null; rm -rf "$bin" "$work"; }
trap cleanup EXIT
go build -o "$bin/custody-device" ./cmd/custody-device
go build -o "$bin/custody-gateway" ./cmd/gateway
dev_pid=$(pgrep -f 'custody-dev( |$)' | head -1 || true)
[ -n "$dev_pid" ] || { echo "custody-dev is not running: start it with make dev" >&2; exit 1; }

port=${LOAD_GATEWAY_PORT:-8444}
KUBECONFIG=$data/gateway/kubeconfig "$bin/custody-gateway" --listen "127.0.0.1:$port" --metrics-bind-address 0 \
  --tls-cert-file "$data/gateway/tls.crt" --tls-key-file "$data/gateway/tls.key" \
  --challenge-key-files "$data/gateway/challenge.key" --operator-namespace custody-system \
  --rate-per-client 1000000 2>"$work/gateway.log" &
gw_pid=$!

kubectl apply -f config/samples/tenant.yaml >/dev/null
kubectl wait tenant/acme --for=condition=Ready --timeout=2m >/dev/null
run=$(date +%s)
: > "$work/devices.yaml"; : > "$work/claims.yaml"
for i in $(seq 1 "$n"); do
  s="LD-$run-$i"
  "$bin/custody-device" init --model LOAD --serial "$s" --dir "$work/devices/$s" >/dev/null
  code=$(awk -F': *' '/Claim code/ {print $2}' "$work/devices/$s/label.txt")
  { cat "$work/devices/$s/device.yaml"; echo ---; } >> "$work/devices.yaml"
  lower=$(echo "$s" | tr 'A-Z' 'a-z')
  cat >> "$work/claims.yaml" <<YAML
apiVersion: v1
kind: Secret
metadata: {name: $lower, namespace: acme, labels: {custody-load: "$run"}}
stringData: {code: "$code"}
---
apiVersion: custody.dev/v1alpha1
kind: Claim
metadata: {name: $lower, namespace: acme, labels: {custody-load: "$run"}}
spec: {serialNumber: $s, model: LOAD, claimCode: {secretRef: {name: $lower}}}
---
YAML
done
kubectl apply -f "$work/devices.yaml" >/dev/null

kubectl create -f "$work/claims.yaml" >/dev/null
kubectl -n acme wait claim -l "custody-load=$run" --for=jsonpath='{.status.phase}'=Bound --timeout=10m >/dev/null
kubectl -n acme get claims -l "custody-load=$run" -o json > "$work/claims.json"
python3 - "$work/claims.json" <<'PY'
import json, sys, datetime as dt
def ts(s): return dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp()
def pct(xs, p): xs = sorted(xs); return xs[min(len(xs) - 1, int(p * len(xs)))]
items = json.load(open(sys.argv[1]))["items"]
created = [ts(c["metadata"]["creationTimestamp"]) for c in items]
bound = [ts(c["status"]["boundAt"]) for c in items]
lat = [b - c for b, c in zip(bound, created)]
span = max(bound) - min(created) + 1
print("claims=%d created over %.0fs, all bound %.0fs after the first: %.1f claims/s; claim-to-bound p50=%.0fs p99=%.0fs (1 s timestamps)"
      % (len(items), max(created) - min(created), span, len(items) / span, pct(lat, .5), pct(lat, .99)))
PY
dataplane=()
if [ -f "$data/mqtt-url" ]; then
  dataplane=(--dataplane "$(cat "$data/mqtt-url")" --dataplane-ca "$data/gateway-ca.crt" \
    --publish-interval "${LOAD_PUBLISH_INTERVAL:-1s}" --duration "${LOAD_PUBLISH_DURATION:-20s}")
fi
"$bin/custody-device" simulate --count "$n" --concurrency "$conc" --dir "$work/devices" \
  --gateway "https://127.0.0.1:$port" --gateway-ca "$data/gateway-ca.crt" "${dataplane[@]}" > "$work/simulate.out"
sed 's/^/simulator: /' "$work/simulate.out"
echo "custody-dev (manager, cert-manager) peak memory: $(awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' /proc/$dev_pid/status)"
echo "custody-gateway peak memory: $(awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' /proc/$gw_pid/status)"
