#!/usr/bin/env bash
# Checks the Grafana dashboard, deploy/grafana/scheduled-jobs.json (run by `cargo test --test
# deploy dashboard`, from the repository's root, with SJ_BIN = the built scheduled-jobs and
# SJ_METRICS_SERIES = the file of every series name the processes export):
#   1. tests/deploy/dashboard.py: the JSON parses; unique panel ids and titles; the Prometheus
#      datasource variable used everywhere; metric names exported (and every exported family
#      shown); jobs real; lag aggregated right; each run-duration panel shows its job's
#      timeout (`config show`); it writes every query as a recording rule to a temporary file
#   2. promtool check rules on that file: every query parses as PromQL (promtool has no
#      standalone parser command; Grafana's variables are replaced first)
# Tools (pinned, installed on first use): scripts/tools.sh promtool | pyyaml. Exits non-zero
# naming every problem found.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

: "${SJ_BIN:?SJ_BIN (the built scheduled-jobs) is not set: run cargo test --test deploy dashboard}"
: "${SJ_METRICS_SERIES:?SJ_METRICS_SERIES (the exported series names) is not set: run cargo test --test deploy dashboard}"

dashboard=deploy/grafana/scheduled-jobs.json
[[ -f $dashboard ]] || { echo "dashboard: $dashboard is missing" >&2; exit 1; }

promtool=$(scripts/tools.sh promtool)
py=$(scripts/tools.sh pyyaml)
export PYTHONDONTWRITEBYTECODE=1

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=()

if ! "$SJ_BIN" config show >"$tmp/config.toml" 2>"$tmp/config.err"; then
  cat "$tmp/config.err" >&2
  echo "dashboard: FAILED: $SJ_BIN config show (the jobs of this build)" >&2
  exit 1
fi

if "$py" tests/deploy/dashboard.py check "$dashboard" "$SJ_METRICS_SERIES" "$tmp/config.toml" "$tmp/queries.rules.json"; then
  echo "dashboard: $dashboard: panels, datasource, metric names, jobs, timeouts: ok"
else
  failed+=("tests/deploy/dashboard.py (problems above)")
fi

if [[ -s $tmp/queries.rules.json ]]; then
  if "$promtool" check rules "$tmp/queries.rules.json" >"$tmp/check.out" 2>&1; then
    echo "dashboard: every query parses as PromQL ($(grep -c '"record"' "$tmp/queries.rules.json") queries)"
  else
    # promtool names each query by its recording rule: dashboard:panel<id>_<title>:<refId>.
    sed "s|$tmp/queries.rules.json|$dashboard (each query as the rule dashboard:panel<id>_<title>:<refId>)|" "$tmp/check.out" >&2
    failed+=("a query of $dashboard does not parse as PromQL")
  fi
fi

if ((${#failed[@]})); then
  printf 'dashboard: FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "dashboard: all checks passed"
