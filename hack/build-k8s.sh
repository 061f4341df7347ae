#!/usr/bin/env bash
# Builds kube-apiserver, kubectl, etcd and helm from the Go module proxy with the
# machine's Go, into a per-user cache keyed by version, and links them into
# .cache/bin/ of this checkout. A second run with the binaries present takes
# well under a second. Every step says what it is doing; a failure says which
# step failed and shows the tail of its log.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache_root="${HOSTFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hostforge}"
k8s_dir="$cache_root/k8s-v$KUBERNETES_VERSION"
etcd_dir="$cache_root/etcd-v$ETCD_VERSION"
helm_dir="$cache_root/helm-v$HELM_VERSION"
link_dir="$root/.cache/bin"
log_dir="$cache_root/logs"
mkdir -p "$k8s_dir" "$etcd_dir" "$helm_dir" "$link_dir" "$log_dir"

step() { printf '[build-k8s] %s\n' "$*" >&2; }

# run_step NAME LOG CMD... : runs CMD, logging to LOG; on failure names the step
# and prints the last lines of its log, then exits non-zero.
run_step() {
  local name="$1" log="$2"
  shift 2
  local start=$SECONDS
  step "$name ..."
  if ! "$@" >"$log" 2>&1; then
    step "FAILED: $name (log: $log)"
    tail -n 40 "$log" >&2
    exit 1
  fi
  step "$name done in $((SECONDS - start))s"
}

command -v go >/dev/null || { step "FAILED: go is not on PATH"; exit 1; }

minor="${KUBERNETES_VERSION#*.}"; minor="${minor%%.*}"
staging_version="v0.$minor.${KUBERNETES_VERSION##*.}"
ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=v$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

build_kubernetes() {
  local mod="$k8s_dir/src"
  mkdir -p "$mod"
  cat >"$mod/go.mod" <<GOMOD
module hostforge.local/k8sbuild

go 1.24

require k8s.io/kubernetes v$KUBERNETES_VERSION

replace (
GOMOD
  local m
  for m in api apiextensions-apiserver apimachinery apiserver cli-runtime client-go \
    cloud-provider cluster-bootstrap code-generator component-base component-helpers \
    controller-manager cri-api cri-client csi-translation-lib dynamic-resource-allocation \
    endpointslice externaljwt kms kube-aggregator kube-controller-manager kube-proxy \
    kube-scheduler kubectl kubelet metrics mount-utils pod-security-admission \
    sample-apiserver sample-cli-plugin sample-controller; do
    echo "	k8s.io/$m => k8s.io/$m $staging_version" >>"$mod/go.mod"
  done
  echo ")" >>"$mod/go.mod"
  cat >"$mod/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  (cd "$mod" && run_step "go mod tidy (k8s.io/kubernetes v$KUBERNETES_VERSION)" "$log_dir/k8s-tidy.log" go mod tidy)
  local cmd
  for cmd in kube-apiserver kubectl; do
    if [[ ! -x "$k8s_dir/$cmd" ]]; then
      (cd "$mod" && run_step "go build $cmd" "$log_dir/$cmd.log" \
        env CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$k8s_dir/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd")
      mv "$k8s_dir/$cmd.tmp" "$k8s_dir/$cmd"
    fi
  done
}

build_etcd() {
  local mod="$etcd_dir/src"
  mkdir -p "$mod"
  cat >"$mod/go.mod" <<GOMOD
module hostforge.local/etcdbuild

go 1.24

require go.etcd.io/etcd/server/v3 v$ETCD_VERSION
GOMOD
  cat >"$mod/tools.go" <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
  (cd "$mod" && run_step "go mod tidy (etcd v$ETCD_VERSION)" "$log_dir/etcd-tidy.log" go mod tidy)
  (cd "$mod" && run_step "go build etcd" "$log_dir/etcd.log" \
    env CGO_ENABLED=0 go build -trimpath -o "$etcd_dir/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$etcd_dir/etcd.tmp" "$etcd_dir/etcd"
}

build_helm() {
  run_step "go install helm v$HELM_VERSION" "$log_dir/helm.log" \
    env GOBIN="$helm_dir" CGO_ENABLED=0 go install "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
}

want="${*:-kube-apiserver kubectl etcd helm}"
for bin in $want; do
  case "$bin" in
    kube-apiserver|kubectl) [[ -x "$k8s_dir/$bin" ]] || build_kubernetes; src="$k8s_dir/$bin" ;;
    etcd) [[ -x "$etcd_dir/etcd" ]] || build_etcd; src="$etcd_dir/etcd" ;;
    helm) [[ -x "$helm_dir/helm" ]] || build_helm; src="$helm_dir/helm" ;;
    *) step "FAILED: unknown binary '$bin'"; exit 1 ;;
  esac
  ln -sfn "$src" "$link_dir/$bin"
done
step "binaries ready in $link_dir"
