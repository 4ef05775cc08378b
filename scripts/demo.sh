#!/usr/bin/env bash
# The main job on a fresh machine: installs QEMU and the guest's parts, writes a real
# RVF file (Debian's cloud kernel + a busybox initramfs, embedded with rvf-runtime),
# and boots it as a microVM with `rvf-operator run` until the guest answers HTTP.
# Extra arguments go to `rvf-operator run` (e.g. `scripts/demo.sh --output json`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/guest-inputs.sh >/dev/null
cargo build --release --quiet --bin rvf-operator --example make_fixture
target_dir="$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
"$target_dir/release/examples/make_fixture" target/demo >/dev/null
echo "booting target/demo/hello.rvf ..." >&2
exec "$target_dir/release/rvf-operator" run --rvf target/demo/hello.rvf --until-ready "$@"
