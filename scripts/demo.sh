#!/usr/bin/env bash
# The README's "run it" command: brings up the local stack, then `scheduled-jobs demo`
# (topics, schemas, migrations, demo data, tick producer + processor in the foreground, a
# summary line per run).
# Usage: scripts/demo.sh [--fast] [-v]     (one line per ended run; -v adds the logs; Ctrl-C to
# stop; the stack keeps running)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/services.sh up
# The settings of the stack just started: its ports, and for the single broker the
# replication-1 topic overlay (the tool's defaults are production's: no overlay).
eval "$(bash scripts/services.sh env)"
exec cargo run --quiet -- demo "$@"
