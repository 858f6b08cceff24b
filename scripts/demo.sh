#!/usr/bin/env bash
# The README's "run it" command: brings up the local stack, then `scheduled-jobs demo`
# (topics, schemas, migrations, demo data, tick producer + processor in the foreground).
# Usage: scripts/demo.sh [--fast]     (Ctrl-C to stop; the stack keeps running)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/services.sh up
exec cargo run --quiet -- demo "$@"
