# promtool (rule checks and rule unit tests), pinned: Debian bookworm's `prometheus` package,
# downloaded with `apt-get download` (not installed: no service, no system-wide change) and
# unpacked with `dpkg-deb -x`; only its usr/bin/promtool is used. tests/deploy/alerts.sh runs
# `promtool check rules` and `promtool test rules`, tests/deploy/dashboard.sh parses the
# dashboard's queries with `promtool check rules`. Sourced by scripts/tools.sh with $TOOLS_DIR set.
#
# 2.42.0: bookworm's version. The rules need nothing newer (last_over_time 2.26, `stale` in
# unit-test series 2.x); building promtool from the Prometheus Go module would cost minutes of
# both cores. Debian's archive keeps only a suite's current version: when a bookworm update
# replaces this one, `apt-get download` fails naming it: set the new version here
# (`apt-cache policy prometheus`).
PROMTOOL_DEB_VERSION=2.42.0+ds-5+deb12u1
PROMTOOL_DIR=$TOOLS_DIR/promtool-$PROMTOOL_DEB_VERSION

install_tool() {
  local stage sudo_cmd=()
  command -v apt-get >/dev/null || { echo "promtool: apt-get (Debian) is needed" >&2; return 1; }
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  # apt-get download needs the package lists; a fresh machine may have none yet.
  if ! apt-cache show "prometheus=$PROMTOOL_DEB_VERSION" >/dev/null 2>&1; then
    "${sudo_cmd[@]}" apt-get update -q >&2 || return 1
  fi
  stage=$(mktemp -d "$TOOLS_DIR/.promtool-stage.XXXXXX")
  if ! (cd "$stage" && apt-get download -q -o APT::Sandbox::User=root "prometheus=$PROMTOOL_DEB_VERSION" >&2 &&
      dpkg-deb -x prometheus_*.deb root); then
    echo "promtool: cannot download Debian's prometheus=$PROMTOOL_DEB_VERSION (apt-cache policy prometheus: is it still the archive's version?)" >&2
    rm -rf "$stage"
    return 1
  fi
  rm -rf "$PROMTOOL_DIR"
  mkdir -p "$PROMTOOL_DIR/bin"
  cp "$stage/root/usr/bin/promtool" "$PROMTOOL_DIR/promtool.tmp"
  cp "$stage/root/usr/share/doc/prometheus/copyright" "$PROMTOOL_DIR/" 2>/dev/null || true
  rm -rf "$stage"
  # Moved into place last: the executable is what marks the tool installed.
  mv "$PROMTOOL_DIR/promtool.tmp" "$PROMTOOL_DIR/bin/promtool"
}

tool_path() {
  echo "$PROMTOOL_DIR/bin/promtool"
}
