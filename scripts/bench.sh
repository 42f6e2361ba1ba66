#!/usr/bin/env bash
# HarmonyLite benchmark: builds the release harmonylite binary and runs the bench (benches/bench.rs, a local
# cluster of three nodes, or N with --nodes N) against it.
#   scripts/bench.sh            full run (a few minutes)
#   scripts/bench.sh --quick    short run (about a minute), as CI does
#   scripts/bench.sh --nodes 5   the same with five nodes
#   scripts/bench.sh --soak 600 adds ten minutes at half the maximum rate, sampling memory
#   scripts/bench.sh --cold-starts 20   twenty more fresh clusters started after the run (5 by default)
#   scripts/bench.sh --cold-starts-only --cold-starts 40   only cold starts (slow ones' logs in target/bench-slow-starts/)
#   scripts/bench.sh --feed-cost-only   only the change feed's cost
#   scripts/bench.sh --lag-only [--lag-runs N] [--lag-load R]   only the loaded lag: N runs (3) at half the maximum rate, or at R rows/s
#   scripts/bench.sh --json out.json
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet --bin harmonylite
export HARMONYLITE_BIN="$PWD/target/release/harmonylite"
exec cargo bench --locked --quiet --bench bench -- "$@"
