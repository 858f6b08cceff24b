#!/usr/bin/env bash
# The validators the deployment checks use (tests/deploy.rs), each pinned and installed on
# first use under $SJ_LOCAL_DIR/tools (default .local/tools), never system-wide:
#
#   scripts/tools.sh <tool>     installs <tool> if missing, prints the path of its executable
#   scripts/tools.sh all        installs every tool (prints nothing)
#
# One script per tool in scripts/tools/<tool>.sh, sourced here with $TOOLS_DIR set; it defines
# `install_tool` (install into "$TOOLS_DIR/<tool>-<version>") and `tool_path` (the executable).
# Packages come from the machine's configured registries (PyPI, npm, the Go module proxy,
# Debian's archive): no index address is written here.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
local_dir=${SJ_LOCAL_DIR:-$root/.local}
[[ $local_dir = /* ]] || local_dir=$root/$local_dir
export TOOLS_DIR=$local_dir/tools
mkdir -p "$TOOLS_DIR"

die() { echo "tools.sh: $*" >&2; exit 1; }

one() {
  local name=$1 script=$root/scripts/tools/$1.sh
  [[ -f $script ]] || die "unknown tool '$name' (have: $(cd "$root/scripts/tools" && ls -- *.sh | sed 's/\.sh$//' | tr '\n' ' '))"
  (
    # shellcheck source=/dev/null
    source "$script"
    path=$(tool_path)
    if [[ ! -x $path ]]; then
      # Serialised per tool: tests run in parallel and may ask for the same one.
      exec 9>"$TOOLS_DIR/.$name.lock"
      flock 9
      path=$(tool_path)
      if [[ ! -x $path ]]; then
        echo "tools.sh: installing $name" >&2
        install_tool >&2 || die "installing $name failed"
        path=$(tool_path)
        [[ -x $path ]] || die "$name: installed, but $path is not executable"
      fi
    fi
    echo "$path"
  )
}

case ${1:-} in
  ""|-h|--help) sed -n '2,12p' "$0"; exit 0 ;;
  all) for s in "$root"/scripts/tools/*.sh; do one "$(basename "$s" .sh)" >/dev/null; done ;;
  *) one "$1" ;;
esac
