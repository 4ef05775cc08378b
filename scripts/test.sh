#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: first installs what the tests need
# (QEMU, busybox, the Debian cloud kernel for the guest fixture, the real Helm binary),
# then `cargo test`. Extra arguments go to `cargo test` (e.g. `scripts/test.sh runtime_vm`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/guest-inputs.sh >/dev/null
scripts/helm.sh >/dev/null
cargo test --all-targets "$@"
