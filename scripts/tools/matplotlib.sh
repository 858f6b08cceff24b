# shellcheck shell=bash
# matplotlib (PyPI), pinned with every dependency, in its own virtualenv: draws the plots of
# docs/performance.md (scripts/plots.sh runs scripts/plots.py with this venv's python).
# Sourced by scripts/tools.sh with $TOOLS_DIR set. The wrapper bin/python-plots is written
# last, once pip has succeeded, so an interrupted install never looks installed.
MATPLOTLIB_VERSION=3.10.7
MATPLOTLIB_DIR=$TOOLS_DIR/matplotlib-$MATPLOTLIB_VERSION
MATPLOTLIB_REQUIREMENTS=(
  "matplotlib==$MATPLOTLIB_VERSION"
  contourpy==1.3.3
  cycler==0.12.1
  fonttools==4.68.0
  kiwisolver==1.5.1
  numpy==2.4.6
  packaging==26.4
  pillow==13.0.0
  pyparsing==3.3.3
  python-dateutil==4.0.0
  tzdata==2026.6
)

install_tool() {
  local dir=$MATPLOTLIB_DIR
  rm -rf "$dir"
  python3 -m venv "$dir/venv" || return 1
  "$dir/venv/bin/pip" install --quiet --disable-pip-version-check --no-deps "${MATPLOTLIB_REQUIREMENTS[@]}" || return 1
  "$dir/venv/bin/pip" check --disable-pip-version-check >/dev/null || { echo "matplotlib: pinned dependencies do not fit" >&2; return 1; }
  "$dir/venv/bin/python" -c 'import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot' || return 1
  mkdir -p "$dir/bin"
  printf '#!/bin/sh\nexec "%s" "$@"\n' "$dir/venv/bin/python" >"$dir/bin/python-plots"
  chmod +x "$dir/bin/python-plots"
}

tool_path() {
  echo "$MATPLOTLIB_DIR/bin/python-plots"
}
