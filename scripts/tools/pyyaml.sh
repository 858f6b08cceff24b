# Python with PyYAML (PyPI), pinned, in its own virtualenv: the deployment checks parse YAML
# with it (tests/deploy/alerts.sh compares the PrometheusRule's groups with the plain rules
# file, reads the CRD's schema; tests/deploy/promql.py). `$(scripts/tools.sh pyyaml) script.py`
# runs a script with `import yaml` available. Sourced by scripts/tools.sh with $TOOLS_DIR set.
#
# PyYAML has no dependencies (--no-deps keeps it so). The wrapper bin/python-yaml is written
# last, once pip has succeeded, so an interrupted install never looks installed.
PYYAML_VERSION=6.0.3
PYYAML_DIR=$TOOLS_DIR/pyyaml-$PYYAML_VERSION

install_tool() {
  local dir=$PYYAML_DIR
  rm -rf "$dir"
  python3 -m venv "$dir/venv" || return 1
  "$dir/venv/bin/pip" install --quiet --disable-pip-version-check --no-deps "PyYAML==$PYYAML_VERSION" || return 1
  "$dir/venv/bin/python" -c 'import yaml' || return 1
  mkdir -p "$dir/bin"
  printf '#!/bin/sh\nexec "%s" "$@"\n' "$dir/venv/bin/python" >"$dir/bin/python-yaml"
  chmod +x "$dir/bin/python-yaml"
}

tool_path() {
  echo "$PYYAML_DIR/bin/python-yaml"
}
