# shellcheck shell=bash
# kubernetes-validate (PyPI), pinned with every dependency, in its own virtualenv: validates
# manifests against the Kubernetes API's JSON schemas of a given Kubernetes version, strict
# (unknown fields rejected). tests/deploy/kubernetes.sh runs its check with this venv's
# python (`<dir>/venv/bin/python`), which imports kubernetes_validate, jsonschema and yaml.
# Sourced by scripts/tools.sh with $TOOLS_DIR set.
#
# 1.37.0 carries the schemas of Kubernetes 1.13 to 1.37. The wrapper bin/kubernetes-validate
# is written last, once pip has succeeded, so an interrupted install never looks installed.
KUBERNETES_VALIDATE_VERSION=1.37.0
KUBERNETES_VALIDATE_DIR=$TOOLS_DIR/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION
KUBERNETES_VALIDATE_REQUIREMENTS=(
  "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  attrs==26.1.0
  importlib_resources==7.1.0
  jsonschema==4.26.0
  jsonschema-specifications==2025.9.1
  packaging==26.4
  PyYAML==6.0.4
  referencing==0.37.0
  rpds-py==2026.9.1
  typing_extensions==4.16.0
)

install_tool() {
  local dir=$KUBERNETES_VALIDATE_DIR
  # The check (tests/deploy/kubernetes.py) reads `config show` with tomllib: Python 3.11+.
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    { echo "kubernetes-validate: python3 3.11 or newer is needed" >&2; return 1; }
  rm -rf "$dir"
  python3 -m venv "$dir/venv" || return 1
  "$dir/venv/bin/pip" install --quiet --disable-pip-version-check --no-deps \
    "${KUBERNETES_VALIDATE_REQUIREMENTS[@]}" || return 1
  "$dir/venv/bin/pip" check --disable-pip-version-check >/dev/null || { echo "kubernetes-validate: pinned dependencies do not fit" >&2; return 1; }
  mkdir -p "$dir/bin"
  printf '#!/bin/sh\nexec "%s" "$@"\n' "$dir/venv/bin/kubernetes-validate" >"$dir/bin/kubernetes-validate"
  chmod +x "$dir/bin/kubernetes-validate"
}

tool_path() {
  echo "$KUBERNETES_VALIDATE_DIR/bin/kubernetes-validate"
}
