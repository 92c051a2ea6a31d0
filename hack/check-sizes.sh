#!/usr/bin/env bash
# Fails when a tracked file is larger than 1 MiB: binaries, data dirs and
# generated corpora belong outside the repository (a submission has a size
# limit, and such files make every clone slower).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
limit=$((1024 * 1024))
status=0
while IFS= read -r -d '' f; do
  [ -f "$f" ] || continue
  size=$(stat -c %s "$f")
  if [ "$size" -gt "$limit" ]; then
    echo "tracked file too large ($size bytes): $f" >&2
    status=1
  fi
done < <(git ls-files -z)
exit $status
