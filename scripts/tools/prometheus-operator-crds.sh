# shellcheck shell=bash
# The prometheus-operator CustomResourceDefinitions (PodMonitor, PrometheusRule, ...), pinned,
# from the Go module proxy: the module's example/prometheus-operator-crd/ holds the CRDs the
# operator installs, each with its OpenAPI v3 schema. kubernetes-validate has no schema for
# these kinds; tests/deploy/kubernetes.sh validates its PodMonitor against the CRD's.
# Sourced by scripts/tools.sh with $TOOLS_DIR set.
#
#   $(scripts/tools.sh prometheus-operator-crds) podmonitors   prints the path of
#                                                 monitoring.coreos.com_podmonitors.yaml
#
# v0.85.0: the version the module proxy serves.
PROMETHEUS_OPERATOR_VERSION=v0.85.0
PROMETHEUS_OPERATOR_CRDS_DIR=$TOOLS_DIR/prometheus-operator-crds-$PROMETHEUS_OPERATOR_VERSION

install_tool() {
  local dir=$PROMETHEUS_OPERATOR_CRDS_DIR module
  command -v go >/dev/null || { echo "prometheus-operator-crds: the Go toolchain (go) is needed" >&2; return 1; }
  module=$(cd "$TOOLS_DIR" && GOTOOLCHAIN=local GOFLAGS=-mod=mod \
    go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])') || return 1
  [[ -d $module/example/prometheus-operator-crd ]] || { echo "prometheus-operator-crds: no example/prometheus-operator-crd in $module" >&2; return 1; }
  rm -rf "$dir"
  mkdir -p "$dir/crds" "$dir/bin"
  cp "$module"/example/prometheus-operator-crd/monitoring.coreos.com_*.yaml "$dir/crds/"
  chmod -R u+w "$dir/crds"
  # Written last: the executable is what marks the tool installed.
  cat >"$dir/bin/prometheus-operator-crd" <<WRAPPER
#!/usr/bin/env bash
# prometheus-operator-crd <plural>: the path of monitoring.coreos.com_<plural>.yaml ($PROMETHEUS_OPERATOR_VERSION)
f="$dir/crds/monitoring.coreos.com_\${1:?usage: prometheus-operator-crd <plural, e.g. podmonitors>}.yaml"
[[ -f \$f ]] || { echo "prometheus-operator-crd: no CRD \$1 (have: \$(cd "$dir/crds" && ls | sed 's/^monitoring.coreos.com_//; s/\.yaml\$//' | tr '\n' ' '))" >&2; exit 1; }
echo "\$f"
WRAPPER
  chmod +x "$dir/bin/prometheus-operator-crd"
}

tool_path() {
  echo "$PROMETHEUS_OPERATOR_CRDS_DIR/bin/prometheus-operator-crd"
}
