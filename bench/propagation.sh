#!/usr/bin/env bash
# bench/propagation.sh: how fast the control plane propagates a change to proxy streams.
#
# Builds mesh-controller and its `propagation` example in release, runs the example (which
# generates a local-mode config directory of 1,000 Services x 10 Workloads, starts the
# controller on it, opens 1,000 discovery streams over 50 gRPC connections and rewrites files),
# and saves the printed report. See bench/README.md ("Control-plane propagation") for the method.
#
# Usage: bench/propagation.sh [--no-build] [-- EXAMPLE FLAGS...]
#   e.g. bench/propagation.sh -- --services 200 --changes 50
# Output: bench/results/propagation-<date-time>.txt (+ .samples.tsv, .controller.log), and stdout.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"

build=1
example_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) build=0 ;;
        -h | --help)
            sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            echo
            echo "Example flags (after --):"
            if [ -x "$ROOT/target/release/examples/propagation" ]; then
                "$ROOT/target/release/examples/propagation" --help
            else
                echo "  (build first to list them)"
            fi
            exit 0
            ;;
        --)
            shift
            example_args=("$@")
            break
            ;;
        *)
            echo "unknown option: $1 (example flags go after --; see --help)" >&2
            exit 2
            ;;
    esac
    shift
done

cd "$ROOT"
if [ "$build" = 1 ]; then
    echo "building (release: fat LTO, a few minutes on 2 cores)..." >&2
    cargo build --release -p mesh-controller --bins --examples
fi
bin="$ROOT/target/release/examples/propagation"
if [ ! -x "$bin" ] || [ ! -x "$ROOT/target/release/mesh-controller" ]; then
    echo "missing $bin or target/release/mesh-controller; run without --no-build" >&2
    exit 1
fi

# A compile or another benchmark running alongside shows up in the latencies: say so.
busy=""
for name in rustc cargo oha haproxy nginx; do
    pids=$(pgrep -x -d, "$name" || true)
    [ -z "$pids" ] || busy="$busy $name:$pids"
done
if [ -n "$busy" ]; then
    echo "warning: other heavy processes are running ($busy ); the figures will be noisy" >&2
fi

mkdir -p "$BENCH_DIR/results"
stamp=$(date +%Y%m%d-%H%M%S)
out="$BENCH_DIR/results/propagation-$stamp.txt"
log="$BENCH_DIR/results/propagation-$stamp.controller.log"
samples="$BENCH_DIR/results/propagation-$stamp.samples.tsv"
tmp="$out.partial"

{
    echo "# bench/propagation.sh, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "# commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')," \
        "$(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg), kernel $(uname -r)"
    echo "# flags: ${example_args[*]:-(defaults)}"
    echo
} >"$tmp"

# The example prints progress on stderr and the report on stdout; it kills the controller when
# it ends (also on Ctrl-C).
if "$bin" --controller-log "$log" --raw "$samples" "${example_args[@]}" >>"$tmp"; then
    mv "$tmp" "$out"
    cat "$out"
    echo >&2
    echo "saved: ${out#"$ROOT"/} (every sample: ${samples#"$ROOT"/}; controller log: ${log#"$ROOT"/})" >&2
else
    rc=$?
    echo "the benchmark failed (exit $rc); controller log: ${log#"$ROOT"/}" >&2
    rm -f "$tmp"
    exit "$rc"
fi
