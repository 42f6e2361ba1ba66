#!/usr/bin/env bash
# Makes a local Debian base image for the Dockerfile, for machines that reach Debian's packages but no
# container registry (so `FROM debian:bookworm-slim` cannot be pulled).
#
# The image is a `debootstrap --variant=minbase` Debian with what the HarmonyLite runtime stage needs already
# installed (sqlite3, ca-certificates), imported with `docker import`. It serves as both build arguments when the
# binary comes from a release archive:
#
#   tag=$(scripts/docker-base-image.sh)
#   docker build --build-arg RUST_IMAGE="$tag" --build-arg RUNTIME_IMAGE="$tag" \
#       --build-arg RELEASE_ARCHIVE=dist/harmonylite-v0.1.0-linux-amd64.tar.gz -t harmonylite .
#
# usage: scripts/docker-base-image.sh [TAG]     (default: $HARMONYLITE_BASE_IMAGE, else harmonylite-base:bookworm)
# env:   DEBIAN_SUITE (default bookworm); debootstrap's default mirror is used.
# An image already tagged TAG is reused as it is (remove it to make it anew). Needs root and debootstrap
# (apt-get install debootstrap). Prints the tag as its last line; everything else goes to stderr.
set -euo pipefail

tag="${1:-${HARMONYLITE_BASE_IMAGE:-harmonylite-base:bookworm}}"
suite="${DEBIAN_SUITE:-bookworm}"
packages="sqlite3,ca-certificates"

if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "docker-base-image.sh: $tag exists; reusing it" >&2
    echo "$tag"
    exit 0
fi
command -v debootstrap >/dev/null 2>&1 || {
    echo "docker-base-image.sh: debootstrap is required (Debian/Ubuntu: apt-get install debootstrap)" >&2
    exit 1
}
[ "$(id -u)" -eq 0 ] || {
    echo "docker-base-image.sh: debootstrap needs root" >&2
    exit 1
}

scratch="$(mktemp -d "${TMPDIR:-/var/tmp}/harmonylite-base.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
rootfs="$scratch/rootfs"

echo "docker-base-image.sh: debootstrap $suite (minbase, with $packages)..." >&2
debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" >&2

# Slim it as the usual slim images are: no package lists, archives, manuals or translations, now or after a
# later apt-get in a Dockerfile.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
CFG
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/tmp/*

echo "docker-base-image.sh: importing it as $tag..." >&2
tar --numeric-owner --xattrs -C "$rootfs" -cf - . |
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' \
        - "$tag" >&2
echo "$tag"
