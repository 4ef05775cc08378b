#!/usr/bin/env bash
# Copies the generated CRDs from crds/ into deploy/crds/ and charts/rvf-operator/crds/.
#
# kustomize refuses files outside the kustomization's folder and Helm only installs CRDs from
# the chart's own crds/ folder, so both carry a byte-for-byte copy. Run after regenerating
# crds/ with `rvf-operator crd > crds/rvfmicrovm.yaml`; tests/install_manifests.rs fails
# while a copy is stale.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
for target in deploy/crds charts/rvf-operator/crds; do
    mkdir -p "${repo_root}/${target}"
    rm -f "${repo_root}/${target}"/*.yaml
    cp "${repo_root}"/crds/*.yaml "${repo_root}/${target}/"
    echo "synced crds/ -> ${target}/"
done
