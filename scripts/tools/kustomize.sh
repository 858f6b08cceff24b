# shellcheck shell=bash
# kustomize (sigs.k8s.io/kustomize/kustomize/v5), pinned, built from the Go module proxy with
# `go install`: tests/deploy/kubernetes.sh renders deploy/kubernetes with `kustomize build`.
# Sourced by scripts/tools.sh with $TOOLS_DIR set.
#
# v5.8.2: v5.8.3, the newest, declares go >= 1.27 and this machine's toolchain is 1.26
# (GOTOOLCHAIN=local: no toolchain download behind our back). kubectl 1.32's built-in
# kustomize (`kubectl apply -k`) is v5.5.0; the base uses nothing newer than that.
KUSTOMIZE_VERSION=v5.8.2
KUSTOMIZE_DIR=$TOOLS_DIR/kustomize-$KUSTOMIZE_VERSION

install_tool() {
  local stage
  command -v go >/dev/null || { echo "kustomize: the Go toolchain (go) is needed" >&2; return 1; }
  stage=$(mktemp -d "$TOOLS_DIR/.kustomize-stage.XXXXXX")
  # Staged, then moved into place: an interrupted build never leaves a binary that looks installed.
  if ! (cd "$stage" && GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$stage" \
      go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"); then
    rm -rf "$stage"
    return 1
  fi
  mkdir -p "$KUSTOMIZE_DIR"
  mv "$stage/kustomize" "$KUSTOMIZE_DIR/kustomize"
  rm -rf "$stage"
}

tool_path() {
  echo "$KUSTOMIZE_DIR/kustomize"
}
