# HarmonyLite container image: the `harmonylite` binary (nats-server bundled inside) on a small Debian with the
# sqlite3 command-line tool, run as the non-root user `harmonylite`, its database and JetStream store in /data.
#
# Build from source (needs a registry for the base images):
#   docker build -t harmonylite .
# Build from a release archive in the build context (scripts/release.sh), no Rust toolchain in the image:
#   docker build --build-arg RELEASE_ARCHIVE=dist/harmonylite-v0.1.0-linux-amd64.tar.gz -t harmonylite .
# Without a registry, make a local Debian base first and pass it as both images (scripts/docker-base-image.sh):
#   docker build --build-arg RUST_IMAGE=harmonylite-base:bookworm --build-arg RUNTIME_IMAGE=harmonylite-base:bookworm \
#       --build-arg RELEASE_ARCHIVE=dist/harmonylite-v0.1.0-linux-amd64.tar.gz -t harmonylite .
#
# Runs with the legacy builder as well as BuildKit (no BuildKit-only syntax).
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
# A path inside the build context; empty: build from the source with cargo (whose build.rs fetches the pinned
# nats-server with pip, installed here when the image lacks it).
ARG RELEASE_ARCHIVE=
WORKDIR /src
COPY . .
RUN set -eu; \
    mkdir -p /out; \
    if [ -n "$RELEASE_ARCHIVE" ]; then \
        [ -f "$RELEASE_ARCHIVE" ] || { echo "RELEASE_ARCHIVE=$RELEASE_ARCHIVE is not in the build context" >&2; exit 1; }; \
        mkdir -p /tmp/release; \
        tar -xzf "$RELEASE_ARCHIVE" -C /tmp/release; \
        cp /tmp/release/harmonylite /out/harmonylite; \
    else \
        if ! python3 -m pip --version >/dev/null 2>&1; then \
            apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-pip; \
        fi; \
        cargo build --release --locked --bin harmonylite; \
        cp target/release/harmonylite /out/harmonylite; \
        strip --strip-all /out/harmonylite || true; \
    fi; \
    /out/harmonylite -version

FROM ${RUNTIME_IMAGE}
# Installs only what the base image lacks, so that a base with them already in needs no package mirror.
RUN set -eu; \
    missing=""; \
    for p in sqlite3 ca-certificates; do \
        dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || missing="$missing $p"; \
    done; \
    if [ -n "$missing" ]; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    groupadd --system --gid 10001 harmonylite; \
    useradd --system --uid 10001 --gid harmonylite --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin harmonylite; \
    mkdir -p /data /etc/harmonylite /usr/share/harmonylite; \
    chown harmonylite:harmonylite /data

COPY --from=build /out/harmonylite /usr/local/bin/harmonylite
COPY docker/entrypoint.sh /usr/local/bin/harmonylite-entrypoint
COPY docker/healthcheck.sh /usr/local/bin/harmonylite-healthcheck
COPY docker/config.toml /etc/harmonylite/config.toml
COPY examples/demo-books.sql /usr/share/harmonylite/demo-books.sql

# The database, the node's state file and the embedded nats-server's JetStream store.
VOLUME ["/data"]
WORKDIR /data
# 6222: cluster routes (-cluster-addr 0.0.0.0:6222); 8090: health and readiness; 3010: Prometheus metrics.
EXPOSE 6222 8090 3010
HEALTHCHECK --interval=5s --timeout=5s --start-period=60s --retries=3 CMD ["harmonylite-healthcheck"]
USER harmonylite
ENTRYPOINT ["harmonylite-entrypoint"]
