#!/usr/bin/env bash
# Validates every manifest offline: renders the base and the example overlay with kustomize
# (`kubectl kustomize`, no cluster), checks each against the Kubernetes schemas of the oldest and
# newest supported minor versions (kubernetes-validate, schemas bundled, strict), then runs the
# static policy check (checkov) with no failed check allowed; every skipped check is explained in
# README.md. Installs its pinned Python tools into target/k8s-venv on first use.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
oldest=1.28.0
newest=1.37.0
venv="$top/target/k8s-venv"
if [ ! -x "$venv/bin/checkov" ] || [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    kubernetes-validate==1.37.0 checkov==3.3.30
fi
command -v kubectl >/dev/null || { echo "kubectl is needed to render the kustomizations (kubectl kustomize)" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
kubectl kustomize "$here/base" >"$out/base.yaml"
kubectl kustomize "$here/overlays/example" >"$out/example.yaml"
echo "rendered: base $(grep -c '^kind:' "$out/base.yaml") objects, example overlay $(grep -c '^kind:' "$out/example.yaml") objects"
for v in "$oldest" "$newest"; do
  "$venv/bin/kubernetes-validate" --quiet --strict -k "$v" "$out/base.yaml" "$out/example.yaml"
  echo "schemas $v: ok"
done
# The policy check runs on what gets applied: the rendered overlay (the base leaves the namespace
# and the image tag to overlays by design). The PodMonitor is a CRD kind without a bundled schema:
# the policy tool is its only check.
(cd "$out" && "$venv/bin/checkov" --quiet --compact --skip-download --framework kubernetes \
  -f example.yaml -f "$here/monitoring/podmonitor.yaml")
echo "policy: no failed check"
