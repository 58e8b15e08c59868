#!/usr/bin/env bash
# Builds the local control plane (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl,
# etcd, helm, kwok) and what a real node needs (kubelet, containerd with its runc shim, ctr, CNI
# plugins) from the Go module proxy into a per-version cache outside the repository.
# Release binaries cannot be downloaded on our machines; the module proxy can be reached.
# Idempotent: a binary already in the cache is not rebuilt. Arguments, if any, name the only
# targets to build (e.g. `build-control-plane.sh kubelet containerd`).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
k8s_version=$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$here/cluster/go.mod" | head -n 1)
bin_dir=${TARS_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tars/bin/$k8s_version}
log=$bin_dir/build.log
mkdir -p "$bin_dir"

minor=$(echo "$k8s_version" | cut -d. -f2)
version_pkg=k8s.io/component-base/version
# Without these the binaries call themselves v0.0.0-master, which confuses helm and version checks.
ldflags="-s -w -X $version_pkg.gitVersion=$k8s_version -X $version_pkg.gitMajor=1 -X $version_pkg.gitMinor=$minor \
 -X $version_pkg.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version"

helm_version=$(awk '$1 == "helm.sh/helm/v3" {print $2}' "$here/helm/go.mod" | head -n 1)
helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version"
for pkg in pkg/chartutil pkg/lint/rules; do
  helm_ldflags="$helm_ldflags -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$minor"
done

containerd_version=$(awk '$1 == "github.com/containerd/containerd/v2" {print $2}' "$here/containerd/go.mod" | head -n 1)
containerd_ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$containerd_version"

# module:name:package[:build tags]. Each module pins its own dependencies so they do not fight.
targets=(
  "cluster:kube-apiserver:k8s.io/kubernetes/cmd/kube-apiserver"
  "cluster:kube-controller-manager:k8s.io/kubernetes/cmd/kube-controller-manager"
  "cluster:kube-scheduler:k8s.io/kubernetes/cmd/kube-scheduler"
  "cluster:kubectl:k8s.io/kubernetes/cmd/kubectl"
  "cluster:etcd:./cmd/etcd"
  "helm:helm:helm.sh/helm/v3/cmd/helm"
  "kwok:kwok:sigs.k8s.io/kwok/cmd/kwok"
  "cluster:kubelet:k8s.io/kubernetes/cmd/kubelet"
  # btrfs and devmapper need cgo and kernel headers; overlayfs and native snapshotters are enough.
  "containerd:containerd:github.com/containerd/containerd/v2/cmd/containerd:no_btrfs no_devmapper no_zfs"
  "containerd:containerd-shim-runc-v2:github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
  "containerd:ctr:github.com/containerd/containerd/v2/cmd/ctr"
  "cni:cni/bridge:github.com/containernetworking/plugins/plugins/main/bridge"
  "cni:cni/host-local:github.com/containernetworking/plugins/plugins/ipam/host-local"
  "cni:cni/loopback:github.com/containernetworking/plugins/plugins/main/loopback"
)
wanted=" $* "

echo "control plane $k8s_version -> $bin_dir (log: $log)"
i=0
for target in "${targets[@]}"; do
  i=$((i + 1))
  IFS=: read -r module name package tags <<<"$target"
  [ $# -eq 0 ] || [[ "$wanted" == *" $name "* ]] || [[ "$wanted" == *" ${name%%/*} "* ]] || continue
  if [ -x "$bin_dir/$name" ]; then
    echo "[$i/${#targets[@]}] $name: already built"
    continue
  fi
  start=$(date +%s)
  echo "[$i/${#targets[@]}] $name: building $package ..."
  flags=$ldflags
  # helm and kwok pin their own k8s.io libraries (separate modules), so the version stamps above do not apply.
  [ "$module" = cluster ] || flags="-s -w"
  # Unstamped, helm believes the cluster is Kubernetes v1.20 and its own version is unknown.
  [ "$module" = helm ] && flags="$helm_ldflags"
  [ "$module" = containerd ] && flags="$containerd_ldflags"
  mkdir -p "$(dirname "$bin_dir/$name")"
  if ! (cd "$here/$module" && CGO_ENABLED=0 go build -trimpath -tags "$tags" -ldflags "$flags" -o "$bin_dir/$name.tmp" "$package") >>"$log" 2>&1; then
    echo "[$i/${#targets[@]}] $name: FAILED, see $log" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
  mv "$bin_dir/$name.tmp" "$bin_dir/$name"
  echo "[$i/${#targets[@]}] $name: built in $(( $(date +%s) - start ))s"
done

# kwok needs stages (what to do with nodes and pods it manages); take upstream's own "fast" stages
# from the module we built, so they always match the binary.
stages=$bin_dir/kwok-stages.yaml
if [ ! -s "$stages" ] && { [ $# -eq 0 ] || [[ "$wanted" == *" kwok "* ]]; }; then
  kwok_dir=$(cd "$here/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  for f in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
           pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
    echo "---"
    cat "$kwok_dir/kustomize/stage/$f.yaml"
  done >"$stages.tmp"
  mv "$stages.tmp" "$stages"
  echo "kwok stages written to $stages"
fi
echo "$bin_dir"
