#!/usr/bin/env bash
# The project's test command (README "Run the tests"; .ci/run runs exactly this).
# Installs the build prerequisites if missing, brings up the real local stack through
# scripts/services.sh, then runs every test against it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# rdkafka builds librdkafka from source: a C toolchain, pkg-config, zlib and OpenSSL headers.
# The console's tests drive Debian's Chromium headless through its WebDriver (chromium-driver).
missing=()
for pkg in build-essential pkg-config zlib1g-dev libssl-dev chromium chromium-driver; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "installing build prerequisites: ${missing[*]}"
  sudo_cmd=(); [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q "${missing[@]}"
fi

bash scripts/services.sh up
cargo test --locked "$@"
