#!/usr/bin/env bash
# Builds the kubectl custody archives for krew into dist/ and writes
# dist/custody.yaml from plugins/custody.yaml with VERSION and each archive's
# sha256. Reproducible: -trimpath, no build ID, fixed archive metadata.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VERSION=${VERSION:?set VERSION, e.g. VERSION=v0.1.0}
GO=${GO:-go}
rm -rf dist && mkdir -p dist
export VERSION
for platform in linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64; do
  os=${platform%/*} arch=${platform#*/}
  bin=kubectl-custody; [ "$os" = windows ] && bin=kubectl-custody.exe
  work=$(mktemp -d)
  CGO_ENABLED=0 GOOS=$os GOARCH=$arch $GO build -trimpath -ldflags="-s -w -buildid=" -o "$work/$bin" ./cmd/kubectl-custody
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work" -cf - "$bin" | gzip -n > "dist/kubectl-custody_${os}_${arch}.tar.gz"
  rm -rf "$work"
  export "SHA256_${os}_${arch}=$(sha256sum "dist/kubectl-custody_${os}_${arch}.tar.gz" | cut -d' ' -f1)"
done
manifest=$(<plugins/custody.yaml)
for v in VERSION SHA256_linux_amd64 SHA256_linux_arm64 SHA256_darwin_amd64 SHA256_darwin_arm64 SHA256_windows_amd64; do
  manifest=${manifest//"\${$v}"/${!v}}
done
printf '%s\n' "$manifest" > dist/custody.yaml
echo "wrote dist/custody.yaml and the archives for $VERSION"
