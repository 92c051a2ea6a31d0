#!/usr/bin/env bash
# Builds kube-apiserver and etcd from the versions pinned in
# hack/tools/{kube-apiserver,etcd}/go.mod into a cache outside the clone, and
# prints the directory. Nothing is downloaded but Go modules: our machines
# cannot fetch prebuilt binaries (setup-envtest does not work here).
#
# Honours KUBEBUILDER_ASSETS: when set, the binaries are expected (and built)
# there instead.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
kube_version=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$root/hack/tools/kube-apiserver/go.mod")
etcd_version=$(awk '$1 == "require" && $2 == "go.etcd.io/etcd/server/v3" {print $3}' "$root/hack/tools/etcd/go.mod")
cache=${XDG_CACHE_HOME:-$HOME/.cache}
dir=${KUBEBUILDER_ASSETS:-$cache/custody/envtest/${kube_version}-etcd${etcd_version}}
mkdir -p "$dir"

build() { # name module-dir package [ldflags]
  local name=$1 moddir=$2 pkg=$3 ldflags=${4:-}
  if [ -x "$dir/$name" ]; then return; fi
  echo "building $name from $pkg (pinned in ${moddir#$root/}) ..." >&2
  (cd "$moddir" && CGO_ENABLED=0 go build -trimpath -ldflags="$ldflags" -o "$dir/$name.tmp" "$pkg")
  mv "$dir/$name.tmp" "$dir/$name"
}

# kube-apiserver reports the version it was built from, as a release build
# does (kubectl version, Helm's kubeVersion checks); one built before it
# did reports v0.0.0-master and is built again.
minor=${kube_version#v*.}; minor=${minor%%.*}
kube_ldflags="-X k8s.io/component-base/version.gitVersion=$kube_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
if [ -x "$dir/kube-apiserver" ] && ! "$dir/kube-apiserver" --version 2>/dev/null | grep -qx "Kubernetes $kube_version"; then
  rm -f "$dir/kube-apiserver"
fi

build etcd "$root/hack/tools/etcd" go.etcd.io/etcd/server/v3
build kube-apiserver "$root/hack/tools/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver "$kube_ldflags"
echo "$dir"
