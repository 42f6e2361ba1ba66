#!/usr/bin/env bash
# The fault suite's long form: the tests of tests/faults*.rs (kill -9 of sidecars, nats-servers and
# applications under load, a node down at the first start, partitions, a full disk, lost progress, poison,
# bad configuration, a lock-prone application) with many cycles, against the release binary.
#
#   scripts/faults.sh [--seed N] [--cycles N] [--duration SECONDS] [--rate TX_PER_S] [--report FILE] [TEST_FILTER]
#
# Defaults: 50 cycles, no time limit (the cycles end a run), 50 application transactions per second per node,
# seed from the clock (printed; pass it again to replay the same schedule). The figures of every test (cycles,
# rows committed, rows lost, application errors by message, time to converge) are appended to the report,
# by default target/faults-report.txt, and printed at the end. Exits non-zero when any invariant broke.
# Needs what scripts/test.sh installs (sqlite3, python3); the partition test needs root (network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."

seed="" cycles=50 duration=0 rate=50 report="target/faults-report.txt" filter=""
while [ $# -gt 0 ]; do
    case "$1" in
    --seed) seed="$2"; shift 2 ;;
    --cycles) cycles="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    --report) report="$2"; shift 2 ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    *) filter="$1"; shift ;;
    esac
done
for v in "$cycles" "$duration"; do
    case "$v" in '' | *[!0-9]*) echo "--cycles and --duration take whole numbers" >&2; exit 2 ;; esac
done
[ -n "$seed" ] || seed=$(( $(date +%s%N) % 1000000 ))

command -v sqlite3 >/dev/null 2>&1 && command -v python3 >/dev/null 2>&1 ||
    { echo "sqlite3 and python3 are needed: run scripts/test.sh once, or install them" >&2; exit 2; }

cargo build --release --locked --quiet --bin harmonylite
export HARMONYLITE_BIN="$PWD/target/release/harmonylite"
export HARMONYLITE_FAULT_SEED="$seed" HARMONYLITE_FAULT_CYCLES="$cycles" \
    HARMONYLITE_FAULT_DURATION_S="$duration" HARMONYLITE_FAULT_RATE="$rate"
mkdir -p "$(dirname "$report")"
case "$report" in /*) ;; *) report="$PWD/$report" ;; esac
export HARMONYLITE_FAULT_REPORT="$report"
{
    echo "# scripts/faults.sh --seed $seed --cycles $cycles --duration $duration --rate $rate $filter"
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ), $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(nproc) cores"
} >>"$report"
start=$(date +%s)
status=0
# One test at a time: each runs its own three-node cluster.
targets=()
for f in tests/faults*.rs; do targets+=(--test "$(basename "$f" .rs)"); done
# Every run keeps its whole output (the tests' logs, a failing test's panic message) in its own file.
output="target/faults-output-$(date -u +%Y%m%dT%H%M%SZ)-seed$seed.txt"
echo "# output: $output" >>"$report"
cargo test --locked --no-fail-fast "${targets[@]}" -- --test-threads 1 --nocapture $filter 2>&1 |
    tee "$output" | awk '/^thread .* panicked/ { n = 4 } n > 0 { print; fflush(); n--; next }
        /^(test |FAULT-REPORT|fault plan|test result)/ { print; fflush() }' || true
! grep -q '^test result: FAILED\|^error' "$output" && grep -q '^test result: ok' "$output" || status=1
echo "# finished in $(( $(date +%s) - start )) s, status $status" >>"$report"
echo
echo "Report ($report):"
tail -n 40 "$report"
[ $status -eq 0 ] || echo "FAILED: see $output (replay with --seed $seed)" >&2
exit $status
