# syntax=docker/dockerfile:1
# privitty/edge — the Privitty Edge container.
#
# Targets:
#   runtime            (default) builds everything from source; needs registry access for the
#                      rust and python base images.
#   runtime-prebuilt   copies binaries built on the host into the same minimal image; needs no
#                      registry (CI builds this one offline). tests/container/build-image.sh stages
#                      target/image/ (the executable of the `image` profile and its links, the
#                      engine from its wheel, the host's CA store, the directory skeleton) and builds it.
#
# The runtime is FROM scratch: one static executable, /usr/local/bin/privitty-init, that is also
# privitty-edged, privitty-edge and licensectl through symlinks (it picks the program by the name it
# runs under: tokio, hyper and rustls exist once), the engine, the system CA store, passwd/group
# files and the directory skeleton. No shell: the health check is `privitty-edge health`. Both
# targets produce the same layout. Runs as uid/gid 1000
# (privitty), which owns /var/lib/privitty, the one volume. Outbound HTTPS (the license server)
# trusts /etc/ssl/certs/ca-certificates.crt plus the bundle named by SSL_CERT_FILE, if set.
# Build with `--format docker` under podman/buildah: the OCI format has no HEALTHCHECK.
# linux/amd64 only: the target triple and the engine wheel's hash are those of x86_64.

# The engine: the pinned deltachat-rpc-server wheel (same pin as tests/scripts/fetch-engine.sh).
ARG DELTACHAT_RPC_SERVER_VERSION=2.65.0
ARG DELTACHAT_RPC_SERVER_SHA256=f2ec9f161ad0ebd3352791a7f8a72d5a1a0e4f3babbd3f12ca8cef40ad8b8aa0

# ---------------------------------------------------------------- build from source
# The toolchain the project is built and tested with (the workspace's rust-version is the minimum).
FROM docker.io/library/rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# The `image` profile (root Cargo.toml) trades compile time for size; static and non-PIE, as
# tests/container/build-binaries.sh builds it (keep the two in step).
RUN RUSTFLAGS='-C target-feature=+crt-static -C relocation-model=static' \
    cargo build --locked --profile image --target x86_64-unknown-linux-gnu --bin privitty \
 && mkdir -p /out/bin /out/certs /out/skel/var/lib /out/skel/tmp /out/data \
 && chmod 0755 /out/skel/var /out/skel/var/lib && chmod 1777 /out/skel/tmp \
 && install -m 0755 target/x86_64-unknown-linux-gnu/image/privitty /out/bin/privitty-init \
 && for name in privitty-edged privitty-edge licensectl; do ln -s privitty-init /out/bin/$name; done \
 && cp /etc/ssl/certs/ca-certificates.crt /out/certs/

FROM docker.io/library/python:3.11-slim-bookworm AS engine
ARG DELTACHAT_RPC_SERVER_VERSION
ARG DELTACHAT_RPC_SERVER_SHA256
RUN echo "deltachat-rpc-server==${DELTACHAT_RPC_SERVER_VERSION} --hash=sha256:${DELTACHAT_RPC_SERVER_SHA256}" >/req.txt \
 && pip download --no-deps --require-hashes --only-binary=:all: -r /req.txt -d /wheel \
 && python3 -c "import zipfile,glob; zipfile.ZipFile(glob.glob('/wheel/*.whl')[0]).extract('deltachat_rpc_server/deltachat-rpc-server','/x')" \
 && install -m 0755 /x/deltachat_rpc_server/deltachat-rpc-server /deltachat-rpc-server

# ---------------------------------------------------------------- common runtime settings
FROM scratch AS base
ARG DELTACHAT_RPC_SERVER_VERSION
LABEL org.opencontainers.image.title="privitty-edge" \
      org.opencontainers.image.description="Privitty Edge: encrypted, revocable file transfer over Delta Chat for edge gateways, gated by a per-device license" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0" \
      org.opencontainers.image.source="https://github.com/privitty/privitty-edge" \
      org.opencontainers.image.version="0.1.0" \
      com.privitty.engine.version="${DELTACHAT_RPC_SERVER_VERSION}"
COPY rootfs/ /
ENV PATH=/usr/local/bin \
    HOME=/var/lib/privitty \
    TMPDIR=/tmp \
    PRIVITTY_ACCOUNTS=/var/lib/privitty \
    PRIVITTY_LISTEN=0.0.0.0:7200 \
    PRIVITTY_ENGINE=/usr/local/bin/deltachat-rpc-server
EXPOSE 7200
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/usr/local/bin/privitty-edge", "health"]
ENTRYPOINT ["/usr/local/bin/privitty-init"]

# ---------------------------------------------------------------- image from host-built binaries
FROM base AS runtime-prebuilt
COPY target/image/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# privitty-init and its links (COPY keeps symlinks), and the engine.
COPY target/image/bin/ /usr/local/bin/
COPY target/image/skel/ /
COPY --chown=1000:1000 target/image/data /var/lib/privitty
USER 1000:1000
VOLUME /var/lib/privitty
WORKDIR /var/lib/privitty

# ---------------------------------------------------------------- image from source (default: last stage)
FROM base AS runtime
COPY --from=builder /out/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=engine /deltachat-rpc-server /usr/local/bin/deltachat-rpc-server
# privitty-init and its links (COPY keeps symlinks).
COPY --from=builder /out/bin/ /usr/local/bin/
COPY --from=builder /out/skel/ /
COPY --from=builder --chown=1000:1000 /out/data /var/lib/privitty
USER 1000:1000
VOLUME /var/lib/privitty
WORKDIR /var/lib/privitty
