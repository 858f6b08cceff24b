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
exec cargo run --quiet -- demo "$@"
