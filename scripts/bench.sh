#!/usr/bin/env bash
# HarmonyLite benchmark: builds in release mode and runs the bench binary (a local three-node cluster).
#   scripts/bench.sh            full run (a few minutes)
#   scripts/bench.sh --quick    short run (about a minute), as CI does
#   scripts/bench.sh --json out.json
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bins --quiet
exec target/release/bench "$@"
