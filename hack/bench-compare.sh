#!/usr/bin/env bash
# Compare BenchmarkClaimToBound of two commits on this machine, in one run,
# next to the machine's ceiling for the same work: argon2id verifications per
# second (internal/claimcode BenchmarkVerify), the cost that bounds claims by
# code. The two test binaries run alternately, ROUNDS times each, so that the
# machine's load drifts equally over both.
#
# Usage: hack/bench-compare.sh BASE [HEAD] [CLAIMS] [ROUNDS]
#   BASE, HEAD  git revisions (HEAD defaults to the work tree)
#   CLAIMS      claims per round (default 200)
#   ROUNDS      rounds per binary (default 3)
set -euo pipefail
base=${1:?usage: hack/bench-compare.sh BASE [HEAD] [CLAIMS] [ROUNDS]}
head=${2:-}
claims=${3:-200}
rounds=${4:-3}
assets=$(./hack/envtest-assets.sh)
work=$(mktemp -d)
cleanup() { git worktree remove --force "$work/base" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

git worktree add --detach "$work/base" "$base" >/dev/null
(cd "$work/base" && go test -c -o "$work/base.test" ./test/integration)
if [ -n "$head" ]; then
  git worktree add --detach "$work/head" "$head" >/dev/null
  (cd "$work/head" && go test -c -o "$work/head.test" ./test/integration)
  git worktree remove --force "$work/head" >/dev/null
else
  go test -c -o "$work/head.test" ./test/integration
fi
go test -c -o "$work/claimcode.test" ./internal/claimcode

echo "machine: $(nproc) cores, $(uname -m); load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "ceiling: argon2id verifications per second, one core and all cores"
"$work/claimcode.test" -test.run '^$' -test.bench '^BenchmarkVerifyParallel$' -test.benchtime 20x -test.cpu "1,$(nproc)" | grep -E '^Benchmark'
for i in $(seq "$rounds"); do
  for which in base head; do
    printf '%s round %d: ' "$which" "$i"
    (cd test/integration && KUBEBUILDER_ASSETS="$assets" "$work/$which.test" -test.run '^$' -test.bench '^BenchmarkClaimToBound$' \
      -test.benchtime "${claims}x" -test.timeout 20m 2>/dev/null | grep -E '^BenchmarkClaimToBound' | grep -oE '[0-9.]+ claims/s')
  done
done
