# syntax=docker/dockerfile:1
#
# The triage-agent image, for builders with a registry at hand: the same image that
# `cargo xtask image` writes offline as an OCI archive (target/image/triage-agent-<version>.oci.tar):
# a static musl binary, eBPF programs embedded, on an empty base. xtask/src/image/dockerfile.rs
# checks that the two agree (build command, binary path, PATH, user, entrypoint, labels).
#
#   docker build -t ghcr.io/triage-agent/triage-agent:0.1.0 \
#       --build-arg REVISION="$(git rev-parse HEAD)" \
#       --build-arg CREATED="$(date -u -d @"$(git log -1 --format=%ct)" +%Y-%m-%dT%H:%M:%SZ)" .
#   (podman build takes the same arguments)

# Build: the stock stable toolchain plus what `cargo xtask setup --build-only` adds: the musl
# target and musl-tools (musl-gcc for ring's C code), the nightly toolchain's rust-src and
# bpf-linker (the eBPF programs, built by agent/build.rs).
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo xtask setup --build-only
RUN cargo build --release --locked --target x86_64-unknown-linux-musl -p triage-agent --bin triage-agent

# Run: nothing but the binary. It needs no libc, no shell and no CA bundle (in a pod it trusts
# the service account's CA; an https OTLP collector is checked against Mozilla's roots compiled
# into the binary, or the CA that OTEL_EXPORTER_OTLP_CERTIFICATE names).
FROM scratch
ARG VERSION=0.1.0
ARG REVISION
ARG CREATED
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/triage-agent /usr/local/bin/triage-agent
# The software's licence and the notices of what it links (cargo xtask codegen writes them).
COPY --from=build /src/LICENSE /usr/share/doc/triage-agent/LICENSE
COPY --from=build /src/THIRD-PARTY-NOTICES.txt /usr/share/doc/triage-agent/THIRD-PARTY-NOTICES.txt
# The DaemonSet and its probes run `triage-agent` by name.
ENV PATH=/usr/local/bin
# Not root by default; the node agent needs root for its capabilities to be effective, and
# deploy/daemonset.yaml sets runAsUser: 0 (deploy/README.md says why).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/triage-agent"]
CMD ["--help"]
LABEL org.opencontainers.image.title="triage-agent" \
      org.opencontainers.image.description="Node agent and CLI that catch the Kubernetes failures that produce no Kubernetes event." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/triage-agent/triage-agent" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
