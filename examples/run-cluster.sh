#!/usr/bin/env bash
# Start a three-node HarmonyLite demo cluster in the foreground. Ctrl+C stops every node.
#
# Creates /tmp/harmonylite-{1,2,3}.db with a sample Books table (7 rows, demo-books.sql), then runs three nodes,
# each with its embedded NATS server, clustered on localhost:4221-4223. Builds the binary first when it is missing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"

if ! command -v sqlite3 >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "Installing the sqlite3 command-line tool (apt-get)..."
        SUDO=""
        [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq sqlite3 >/dev/null
    fi
    command -v sqlite3 >/dev/null 2>&1 || {
        echo "run-cluster.sh: the sqlite3 command-line tool is required (Debian/Ubuntu: sudo apt install sqlite3)" >&2
        exit 1
    }
fi

# A release archive ships ./harmonylite; in a source checkout build it and link it there.
if [ -x ./harmonylite ] && [ ! -L ./harmonylite ]; then
    bin=./harmonylite
else
    if [ -f Cargo.toml ]; then
        echo "Building harmonylite (cargo build --release)..."
        cargo build --release --quiet
        ln -sfn target/release/harmonylite harmonylite
    fi
    bin=./harmonylite
fi
[ -x "$bin" ] || { echo "run-cluster.sh: no harmonylite binary found" >&2; exit 1; }

echo "Creating /tmp/harmonylite-{1,2,3}.db with a Books table..."
for n in 1 2 3; do
    rm -rf "/tmp/harmonylite-$n.db" "/tmp/harmonylite-$n.db-wal" "/tmp/harmonylite-$n.db-shm" \
        "/tmp/harmonylite-$n-sm.cbor" "/tmp/harmonylite-$n-sm.cbor.lock" "/tmp/nats-$n"
    sqlite3 "/tmp/harmonylite-$n.db" <"$here/demo-books.sql"
done

pids=()
stop() {
    trap - EXIT INT TERM
    echo
    echo "Stopping the cluster..."
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    echo "All nodes stopped."
}
trap stop EXIT INT TERM

"$bin" -config examples/node-1-config.toml -cluster-addr localhost:4221 \
    -cluster-peers 'nats://localhost:4222/,nats://localhost:4223/' &
pids+=($!)
"$bin" -config examples/node-2-config.toml -cluster-addr localhost:4222 \
    -cluster-peers 'nats://localhost:4221/,nats://localhost:4223/' &
pids+=($!)
"$bin" -config examples/node-3-config.toml -cluster-addr localhost:4223 \
    -cluster-peers 'nats://localhost:4221/,nats://localhost:4222/' &
pids+=($!)

echo "Cluster starting (node pids ${pids[*]}); press Ctrl+C to stop."
echo "Watch replication live: http://127.0.0.1:8090/ (node 1), http://127.0.0.1:8091/ (node 2), http://127.0.0.1:8092/ (node 3)"
wait
