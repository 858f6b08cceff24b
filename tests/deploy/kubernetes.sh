#!/usr/bin/env bash
# Checks deploy/kubernetes, the kustomize base (run from the repository's root by
# `cargo test --test deploy kubernetes`, with SJ_BIN the built scheduled-jobs):
#
#   1. `kustomize build deploy/kubernetes` (pinned kustomize) renders it;
#   2. tests/deploy/kubernetes.py, with kubernetes-validate's virtualenv, validates every
#      object against the Kubernetes API schemas (strict) of the oldest and newest versions
#      below, the PodMonitor against prometheus-operator's CRD schema, checks what matters
#      and no schema says (instance ids from the pod name, credentials only via secretKeyRef,
#      probes on /healthz and /readyz, the setup Job's three steps, ...), and runs
#      `scheduled-jobs config check` / `config show` with each container's environment.
#
# Exits non-zero with one line per problem, each naming the object, container and field.
# The tools come from scripts/tools.sh (installed on first use under .local/tools).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
: "${SJ_BIN:?SJ_BIN must name the built scheduled-jobs binary}"

# Kubernetes versions validated against: the oldest still maintained upstream and the newest
# kubernetes-validate knows.
KUBE_VERSIONS=(1.35.0 1.37.0)

fail() { echo "kubernetes: $*" >&2; exit 1; }

kustomize=$(scripts/tools.sh kustomize) || fail "cannot install kustomize"
validate=$(scripts/tools.sh kubernetes-validate) || fail "cannot install kubernetes-validate"
crds=$(scripts/tools.sh prometheus-operator-crds) || fail "cannot install the prometheus-operator CRDs"
podmonitor_crd=$("$crds" podmonitors) || fail "no PodMonitor CRD"
python=${validate%/bin/kubernetes-validate}/venv/bin/python
[[ -x $python ]] || fail "no python in kubernetes-validate's virtualenv ($python)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! "$kustomize" build deploy/kubernetes >"$work/build.yaml" 2>"$work/kustomize.err"; then
  fail "kustomize build deploy/kubernetes failed: $(cat "$work/kustomize.err")"
fi

versions=()
for v in "${KUBE_VERSIONS[@]}"; do versions+=(--kube-version "$v"); done
"$python" tests/deploy/kubernetes.py \
  --build "$work/build.yaml" \
  --base deploy/kubernetes \
  --crd "$podmonitor_crd" \
  "${versions[@]}" \
  --sj-bin "$SJ_BIN" \
  --root "$root"
