#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: first installs what the tests need
# (QEMU, busybox, the Debian cloud kernel for the guest fixture, the real Helm binary),
# then `cargo test --all-targets`. Arguments replace `--all-targets` and go to
# `cargo test` (e.g. `scripts/test.sh --test runtime_vm`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/guest-inputs.sh >/dev/null
scripts/helm.sh >/dev/null
if [ "$#" -eq 0 ]; then
    set -- --all-targets
fi
cargo test "$@"
