#!/usr/bin/env bash
# Checks the alerting rules, deploy/prometheus/ (run by `cargo test --test deploy alerts`, from
# the repository's root, with SJ_BIN = the built scheduled-jobs and SJ_METRICS_SERIES = the file
# of every series name the processes export):
#   1. promtool check rules rules.yml         (syntax, PromQL, templates, durations)
#   2. promtool test rules rules.test.yml rules.days.test.yml
#                                             (the unit tests: each alert firing and not)
#   3. tests/deploy/alerts.py                 (the PrometheusRule's spec.groups = rules.yml's
#      groups; metric names exported; jobs real; lag aggregated right; severity, annotations;
#      every alert tested both ways)
#   4. check-jsonschema: prometheus-rule.yaml against the prometheus-operator CRD's schema
# Tools (pinned, installed on first use): scripts/tools.sh promtool | pyyaml | check-jsonschema
# | prometheus-operator-crds. Exits non-zero naming every problem found.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

: "${SJ_BIN:?SJ_BIN (the built scheduled-jobs) is not set: run cargo test --test deploy alerts}"
: "${SJ_METRICS_SERIES:?SJ_METRICS_SERIES (the exported series names) is not set: run cargo test --test deploy alerts}"

dir=deploy/prometheus
rules=$dir/rules.yml
prule=$dir/prometheus-rule.yaml
tests=("$dir/rules.test.yml" "$dir/rules.days.test.yml")
for f in "$rules" "$prule" "${tests[@]}"; do
  [[ -f $f ]] || { echo "alerts: $f is missing" >&2; exit 1; }
done

promtool=$(scripts/tools.sh promtool)
py=$(scripts/tools.sh pyyaml)
cjs=$(scripts/tools.sh check-jsonschema)
crd=$("$(scripts/tools.sh prometheus-operator-crds)" prometheusrules)
export PYTHONDONTWRITEBYTECODE=1

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=()

# The unit tests take the longest: in the background, one promtool per file.
test_pids=()
for i in "${!tests[@]}"; do
  "$promtool" test rules "${tests[$i]}" >"$tmp/test-$i.out" 2>&1 &
  test_pids+=($!)
done

if "$promtool" check rules "$rules" >"$tmp/check.out" 2>&1; then
  echo "alerts: promtool check rules $rules: ok ($(grep -o '[0-9]* rules found' "$tmp/check.out"))"
else
  cat "$tmp/check.out" >&2
  failed+=("promtool check rules $rules")
fi

if ! "$SJ_BIN" config show >"$tmp/config.toml" 2>"$tmp/config.err"; then
  cat "$tmp/config.err" >&2
  failed+=("$SJ_BIN config show (the jobs of this build)")
elif "$py" tests/deploy/alerts.py check "$rules" "$prule" "$SJ_METRICS_SERIES" "$tmp/config.toml" "${tests[@]}"; then
  echo "alerts: $prule = $rules, metric names, jobs, labels, annotations, test coverage: ok"
else
  failed+=("tests/deploy/alerts.py (problems above)")
fi

"$py" tests/deploy/alerts.py schema "$crd" "$tmp/prometheusrule.schema.json"
if "$cjs" --schemafile "$tmp/prometheusrule.schema.json" "$prule" >"$tmp/schema.out" 2>&1; then
  echo "alerts: $prule against the CRD schema ($(basename "$crd")): ok"
else
  cat "$tmp/schema.out" >&2
  failed+=("$prule does not fit the PrometheusRule CRD's schema")
fi

for i in "${!tests[@]}"; do
  if wait "${test_pids[$i]}"; then
    echo "alerts: promtool test rules ${tests[$i]}: ok"
  else
    cat "$tmp/test-$i.out" >&2
    failed+=("promtool test rules ${tests[$i]}")
  fi
done

if ((${#failed[@]})); then
  printf 'alerts: FAILED: %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "alerts: all checks passed"
