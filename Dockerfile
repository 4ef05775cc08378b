# syntax=docker/dockerfile:1
#
# One image for the controller and for the VM pods: the rvf-operator binary plus QEMU.
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t ghcr.io/rvf-operator/rvf-operator:0.1.0 .
#
# Each platform builds natively (under emulation on a foreign host), so no cross linker is
# needed. The image runs as an unprivileged user by default, which is all the controller needs;
# the VM pods the controller creates override that and run privileged for /dev/kvm.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /src

# The cache mounts keep downloaded and compiled dependencies between builds (BuildKit).
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin rvf-operator \
    && install -D -m 0755 target/release/rvf-operator /out/rvf-operator

FROM ${RUNTIME_IMAGE}
# Set by buildx for each platform; a plain `docker build` defaults to amd64.
ARG TARGETARCH=amd64

# QEMU for the guest architecture of this platform (qemu-system-x86 gives qemu-system-x86_64,
# qemu-system-arm gives qemu-system-aarch64); CA certificates for http sources.
# Debian versions are not pinned: bookworm's security updates replace them, and a pinned
# version then no longer exists in the archive.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN case "${TARGETARCH}" in \
        amd64) qemu_pkg=qemu-system-x86 ;; \
        arm64) qemu_pkg=qemu-system-arm ;; \
        *) echo "unsupported TARGETARCH ${TARGETARCH}" >&2; exit 1 ;; \
    esac \
    && apt-get update \
    && apt-get install -y --no-install-recommends "${qemu_pkg}" ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 65532 rvf \
    && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --shell /usr/sbin/nologin rvf

COPY --from=builder /out/rvf-operator /usr/local/bin/rvf-operator

LABEL org.opencontainers.image.title="rvf-operator" \
      org.opencontainers.image.description="Kubernetes operator that runs RVF kernels as QEMU microVMs" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"

USER 65532:65532
ENTRYPOINT ["/usr/local/bin/rvf-operator"]
CMD ["controller"]
