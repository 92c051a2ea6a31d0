#!/usr/bin/env bash
# Load and scale harness against a running custody-dev (make dev): every
# figure next to the ceiling it is judged against, measured in the same run.
# The cluster side is hack/loadgen, the devices' side custody-device
# simulate (its own process); the device gateway runs as its own
# custody-gateway process, so that its memory is measured apart.
# docs/performance.md ("Method") says what each phase measures.
#
# Usage: hack/load.sh [CLAIMS] [CONCURRENCY] [DATA_DIR]
#   CLAIMS       claims of each kind (code, sale record, pairing token); the
#                devices they bind then enroll, renew and send heartbeats
#   CONCURRENCY  devices enrolling, renewing or claiming with a token at once
# Environment (defaults in brackets):
#   LOAD_PHASES            [ceiling,ingest,claims,enroll,renew,heartbeat]
#                          also: rss,resync (make scale runs them all)
#   LOAD_DEVICES           Devices the ERP creates in ingest [3 × CLAIMS]
#   LOAD_WRITERS           writers for ceiling, ingest, claims [32]
#   LOAD_CEILING_WRITES    ConfigMaps per ceiling measurement [2000]
#   LOAD_HEARTBEAT_CONCURRENCY [32]  LOAD_HEARTBEAT_DURATION [10s]
#   LOAD_HEARTBEAT_DEVICES [every bound device]
#   LOAD_SCALE             Device counts for rss; resync at the largest [10000,100000]
#   LOAD_SCALE_BOUND       Devices rss binds at most, in all [every one]
#   LOAD_SCALE_BIND        how rss binds them: sale (the ERP sells each, the
#                          manager binds it) or restore (re-created bound,
#                          as a restore of a backup) [sale]
#   LOAD_TIMEOUT           how long to wait for the manager at each step [30m]
#   LOAD_MANAGER_METRICS   custody-dev's --metrics-addr [127.0.0.1:8080]
#   LOAD_MANAGER_HEALTH    custody-dev's --health-addr [127.0.0.1:8081]
#   LOAD_GATEWAY_PORT      the harness's custody-gateway [8444]
#   LOAD_OUT               the JSON report [load-report.json]
#   LOAD_PUBLISH_DURATION  with the data plane (DATA_DIR/mqtt-url) and the
#                          enroll phase: enrolled devices publish telemetry
#                          every LOAD_PUBLISH_INTERVAL [1s] for this long [20s];
#                          0 skips it
#
# Every simulated device comes from 127.0.0.1, so the gateway runs with its
# per-client and per-serial limits lifted (they would throttle them as one
# client). The gateway's log goes to DATA_DIR/logs/load-gateway.log.
set -euo pipefail
claims=${1:-50}; conc=${2:-8}; data=${3:-.custody-dev}
phases=${LOAD_PHASES:-ceiling,ingest,claims,enroll,renew,heartbeat}
bin=$(mktemp -d); work=$(mktemp -d)
gw_pid=
cleanup() { [ -n "$gw_pid" ] && kill "$gw_pid" 2>/dev/null; rm -rf "$bin" "$work"; }
trap cleanup EXIT
go build -o "$bin/custody-device" ./cmd/custody-device
go build -o "$bin/custody-gateway" ./cmd/gateway
go build -o "$bin/loadgen" ./hack/loadgen
[ -f "$data/kubeconfig" ] || { echo "no $data/kubeconfig: start custody-dev with make dev" >&2; exit 1; }
if [[ ",$phases," == *,rss,* ]] && [ -f "$data/gateway-url" ]; then
  echo "note: custody-dev serves its own gateway, whose cache of every Device counts in custody-dev's memory;" >&2
  echo "      for the manager's memory alone start it with: make dev DEV_FLAGS=--gateway-addr=none" >&2
fi

port=${LOAD_GATEWAY_PORT:-8444}
KUBECONFIG=$data/gateway/kubeconfig "$bin/custody-gateway" --listen "127.0.0.1:$port" --metrics-bind-address 0 \
  --tls-cert-file "$data/gateway/tls.crt" --tls-key-file "$data/gateway/tls.key" \
  --challenge-key-files "$data/gateway/challenge.key" --operator-namespace custody-system \
  --rate-per-client 100000000 --rate-per-serial 1000000 2>"$data/logs/load-gateway.log" &
gw_pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done

echo "command: hack/load.sh $* (LOAD_PHASES=$phases${LOAD_SCALE:+ LOAD_SCALE=$LOAD_SCALE}${LOAD_SCALE_BOUND:+ LOAD_SCALE_BOUND=$LOAD_SCALE_BOUND}${LOAD_SCALE_BIND:+ LOAD_SCALE_BIND=$LOAD_SCALE_BIND}${LOAD_DEVICES:+ LOAD_DEVICES=$LOAD_DEVICES})"
"$bin/loadgen" --data-dir "$data" --phases "$phases" --claims "$claims" --concurrency "$conc" \
  --devices "${LOAD_DEVICES:-$((3 * claims))}" --writers "${LOAD_WRITERS:-32}" --ceiling-writes "${LOAD_CEILING_WRITES:-2000}" \
  --heartbeat-concurrency "${LOAD_HEARTBEAT_CONCURRENCY:-32}" --heartbeat-duration "${LOAD_HEARTBEAT_DURATION:-10s}" \
  --heartbeat-devices "${LOAD_HEARTBEAT_DEVICES:-0}" --scale "${LOAD_SCALE:-10000,100000}" --scale-bound "${LOAD_SCALE_BOUND:-0}" --scale-bind "${LOAD_SCALE_BIND:-sale}" \
  --manager-metrics "${LOAD_MANAGER_METRICS:-127.0.0.1:8080}" --manager-health "${LOAD_MANAGER_HEALTH:-127.0.0.1:8081}" \
  --gateway "https://127.0.0.1:$port" --gateway-ca "$data/gateway-ca.crt" --gateway-pid "$gw_pid" \
  --custody-device "$bin/custody-device" --work "$work" --out "${LOAD_OUT:-load-report.json}" --timeout "${LOAD_TIMEOUT:-30m}"

if [ -f "$data/mqtt-url" ] && [ "${LOAD_PUBLISH_DURATION:-20s}" != 0 ] && [[ ",$phases," == *,enroll,* ]]; then
  n=$(find "$work/bound" -mindepth 1 -maxdepth 1 -type d | wc -l)
  "$bin/custody-device" simulate --count "$n" --concurrency "$conc" --dir "$work/bound" \
    --gateway "https://127.0.0.1:$port" --gateway-ca "$data/gateway-ca.crt" \
    --dataplane "$(cat "$data/mqtt-url")" --dataplane-ca "$data/gateway-ca.crt" \
    --publish-interval "${LOAD_PUBLISH_INTERVAL:-1s}" --duration "${LOAD_PUBLISH_DURATION:-20s}" | sed 's/^/data plane: /'
fi
echo "custody-gateway peak memory: $(awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' /proc/$gw_pid/status)"
