#!/usr/bin/env bash
# bench/run.sh: benchmark mesh-proxy against a direct connection, HAProxy and nginx.
#
# One machine, one run, five targets in front of the same upstream (mesh-echo):
#   direct     load generator -> upstream
#   mesh-1hop  load generator -> mesh-proxy (outbound) -> upstream
#   mesh-2hop  load generator -> mesh-proxy (client sidecar, outbound)
#                             -> HTTP/2 -> mesh-proxy (server sidecar, inbound) -> upstream
#   mesh-2hop-mtls  the same two hops with workload identities (a mesh-controller in local mode
#                   issues the certificates and serves discovery): HTTP/2 over mutual TLS 1.3
#   haproxy    load generator -> HAProxy (1 thread) -> upstream, keep-alive both sides
#   nginx      load generator -> nginx (1 worker) -> upstream, keep-alive both sides
#
# For every target it measures (see bench/README.md for the method):
#   - max throughput at a fixed concurrency (closed loop), proxy pinned to one core;
#   - the proxy's CPU time per request in that saturated run (/proc/PID/stat);
#   - RSS idle and under load (VmRSS from /proc/PID/status);
#   - p50/p99/p99.9 latency at fixed request rates (open loop, oha --latency-correction);
#   - for the two-hop targets, the cost of a new connection between the proxies (mTLS: a full
#     TLS 1.3 handshake): HTTP/1.1 upgrade requests, which the client sidecar sends over a
#     connection of their own, closed loop; connections per second and CPU per connection.
# It refuses to report if other processes used noticeable CPU during a measurement.
# That is the http1 suite; bench/suites.sh adds h2 (h2load -> nghttpd), grpc (sequential unary
# gRPC vs HTTP/2) and tcp (redis-benchmark -> redis-server), measured the same way.
#
# Usage: bench/run.sh [--quick] [--force] [--targets LIST] [--suites LIST] [--no-install] [--no-build]
# Settings (environment): see usage() below.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=bench/suites.sh
source "$BENCH_DIR/suites.sh" # the h2, grpc and tcp suites; they use the functions below
ROOT=$(cd "$BENCH_DIR/.." && pwd)
MAIN_PID=$BASHPID # the script's own process; its CPU (and that of oha, its child) is "ours"
export PATH="$HOME/.cargo/bin:$PATH"

ALL_TARGETS="direct,mesh-1hop,mesh-2hop,mesh-2hop-mtls,haproxy,nginx"
ALL_SUITES="http1,h2,grpc,tcp" # see bench/suites.sh for h2, grpc and tcp
HOST_HEADER="echo.bench:8080" # the authority the mesh proxies resolve; sent to every target

# ---------------------------------------------------------------------------------------------
# Command line and settings
# ---------------------------------------------------------------------------------------------

usage() {
    cat <<EOF
Usage: bench/run.sh [options]

Options:
  --quick            short runs (3s per measurement, 1s warm-up) for a smoke test
  --force            report even if other processes used CPU during a measurement
                     (the report is then marked as NOISY)
  --targets LIST     comma-separated subset of: $ALL_TARGETS (default: all;
                     nginx and mesh-2hop-mtls take part in the http1 suite only)
  --suites LIST      comma-separated subset of: $ALL_SUITES (default: all)
                       http1  oha against mesh-echo (HTTP/1.1)
                       h2     h2load against nghttpd (HTTP/2, HAProxy in h2 mode)
                       grpc   sequential unary gRPC vs HTTP/2 GET/POST (h2load, grpcio)
                       tcp    redis-benchmark against redis-server (opaque TCP)
  --no-install       do not apt-get/cargo install anything (fail if missing)
  --no-build         do not run cargo build (use the binaries in target/release)
  -h, --help         this text

Environment:
  BENCH_DURATION          duration of each measurement, e.g. 10s, 30s, 1m (default 10s, quick 3s)
  BENCH_WARMUP            warm-up before each target's measurements (default 2s, quick 1s)
  BENCH_CONCURRENCY       connections for the max-throughput run (default 64)
  BENCH_RATES             fixed request rates for latency, space-separated (default "1000 5000")
  BENCH_RATE_CONNECTIONS  connections for the fixed-rate runs (default 32)
  BENCH_CONN_CONCURRENCY  connections of the new-connection run of the two-hop targets (default 16;
                          0 skips that run)
  BENCH_CONTROLLER_BIN    mesh-controller binary for mesh-2hop-mtls (default: the release build,
                          built by the script)
  BENCH_REPEAT            run every measurement N times, report the median run (default 3, quick 1)
  BENCH_MAX_OTHER_CPU     max CPU of other processes, % of one core, averaged (default 10)
  BENCH_MAX_STEAL         max CPU time the hypervisor may steal, % of one core (default 2)
  BENCH_NOISE_RETRIES     times a disturbed measurement is repeated before giving up (default 3)
  BENCH_NOISE_BACKOFF     seconds to wait before such a repeat (default 30)
  BENCH_PROXY_CORE        core for the proxy / HAProxy / nginx (default 0)
  BENCH_LOAD_CORE         core for the load generator and the upstream (default 1)
  BENCH_PORT_BASE         first of the 127.0.0.1 ports used (default 19000)
  h2 suite:
  BENCH_H2_REQUESTS       requests of the max-throughput run (default 100000, quick 20000)
  BENCH_H2_CLIENTS        h2load connections (-c) of that run (default 16)
  BENCH_H2_STREAMS        h2load concurrent streams per connection (-m) (default 10)
  BENCH_H2_RATES          total fixed rates of the latency runs (default: BENCH_RATES)
  BENCH_H2_RATE_CLIENTS   connections of the latency runs; each sends rate/N req/s (default 10)
  BENCH_H2_BODY_BYTES     size of the file nghttpd serves (default 64)
  grpc suite:
  BENCH_GRPC_CALLS        sequential calls per measurement (default 20000, quick 2000)
  BENCH_GRPC_MSG_BYTES    size of the request's string field (default 64)
  BENCH_PYTHON            python with grpcio (default python3)
  tcp suite:
  BENCH_REDIS_REQUESTS    requests per redis-benchmark test (default 200000, quick 50000)
  BENCH_REDIS_CLIENTS     redis-benchmark connections (default 50)
  BENCH_REDIS_TESTS       redis-benchmark tests, each its own measurement (default "set get")
EOF
}

QUICK=0
FORCE=0
INSTALL=1
BUILD=1
TARGETS=$ALL_TARGETS
SUITES=$ALL_SUITES

parse_args() {
    while (($# > 0)); do
        case "$1" in
            --quick) QUICK=1 ;;
            --force) FORCE=1 ;;
            --no-install) INSTALL=0 ;;
            --no-build) BUILD=0 ;;
            --targets)
                [[ $# -ge 2 ]] || die "--targets needs a value"
                TARGETS=$2
                shift
                ;;
            --targets=*) TARGETS=${1#--targets=} ;;
            --suites)
                [[ $# -ge 2 ]] || die "--suites needs a value"
                SUITES=$2
                shift
                ;;
            --suites=*) SUITES=${1#--suites=} ;;
            -h | --help)
                usage
                exit 0
                ;;
            *) die "unknown argument '$1' (see --help)" ;;
        esac
        shift
    done
    local t
    for t in ${TARGETS//,/ }; do
        [[ ",$ALL_TARGETS," == *",$t,"* ]] || die "unknown target '$t' (known: $ALL_TARGETS)"
    done
    for t in ${SUITES//,/ }; do
        [[ ",$ALL_SUITES," == *",$t,"* ]] || die "unknown suite '$t' (known: $ALL_SUITES)"
    done

    if ((QUICK)); then
        DURATION=${BENCH_DURATION:-3s}
        WARMUP=${BENCH_WARMUP:-1s}
    else
        DURATION=${BENCH_DURATION:-10s}
        WARMUP=${BENCH_WARMUP:-2s}
    fi
    # A bare number means seconds (oha wants a unit).
    [[ $DURATION =~ ^[0-9]+$ ]] && DURATION="${DURATION}s"
    [[ $WARMUP =~ ^[0-9]+$ ]] && WARMUP="${WARMUP}s"
    CONCURRENCY=${BENCH_CONCURRENCY:-64}
    RATES=${BENCH_RATES:-1000 5000}
    RATE_CONNECTIONS=${BENCH_RATE_CONNECTIONS:-32}
    CONN_CONCURRENCY=${BENCH_CONN_CONCURRENCY:-16}
    [[ $CONN_CONCURRENCY =~ ^[0-9]+$ ]] || die "BENCH_CONN_CONCURRENCY: expected a whole number, got '$CONN_CONCURRENCY'"
    REPEAT=${BENCH_REPEAT:-$((QUICK ? 1 : 3))}
    local n
    parse_suite_settings # bench/suites.sh
    for n in "$CONCURRENCY" "$RATE_CONNECTIONS" "$REPEAT" $RATES $SUITE_NUMBERS; do
        [[ $n =~ ^[1-9][0-9]*$ ]] || die "expected a positive whole number, got '$n'"
    done
    MAX_OTHER_CPU=${BENCH_MAX_OTHER_CPU:-10}
    MAX_STEAL=${BENCH_MAX_STEAL:-2}
    NOISE_RETRIES=${BENCH_NOISE_RETRIES:-3}
    NOISE_BACKOFF=${BENCH_NOISE_BACKOFF:-30}
    PROXY_CORE=${BENCH_PROXY_CORE:-0}
    LOAD_CORE=${BENCH_LOAD_CORE:-1}
    PORT_BASE=${BENCH_PORT_BASE:-19000}

    # Ports, all on 127.0.0.1.
    UPSTREAM_PORT=$((PORT_BASE + 1))
    NGHTTPD_PORT=$((PORT_BASE + 2))  # h2 suite
    GRPCIO_PORT=$((PORT_BASE + 3))   # grpc suite: the python grpcio echo server
    REDIS_PORT=$((PORT_BASE + 4))    # tcp suite
    HAPROXY_PORT=$((PORT_BASE + 80))
    NGINX_PORT=$((PORT_BASE + 81))
    MESH1_OUT=$((PORT_BASE + 140)) MESH1_IN=$((PORT_BASE + 143)) MESH1_ADMIN=$((PORT_BASE + 191))
    # Two hops: the server sidecar (next to the upstream) and the client sidecar (next to oha).
    MESH2S_OUT=$((PORT_BASE + 240)) MESH2S_IN=$((PORT_BASE + 243)) MESH2S_ADMIN=$((PORT_BASE + 291))
    MESH2C_OUT=$((PORT_BASE + 340)) MESH2C_IN=$((PORT_BASE + 343)) MESH2C_ADMIN=$((PORT_BASE + 391))
    # mesh-2hop-mtls: the controller that certifies the two sidecars (which use the ports above).
    CTRL_GRPC=$((PORT_BASE + 86)) CTRL_ADMIN=$((PORT_BASE + 90))
}

has_target() { [[ ",$TARGETS," == *",$1,"* ]]; }
has_suite() { [[ ",$SUITES," == *",$1,"* ]]; }
has_mtls_target() { has_target mesh-2hop-mtls && has_suite http1; }

# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
    printf 'bench: error: %s\n' "$*" >&2
    exit 1
}

# Processes this script started; all of them are stopped on exit.
STARTED_PIDS=()
WORK_DIR=""

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${STARTED_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED_PIDS[@]}"; do
        # Give each a moment, then insist.
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    suites_cleanup # bench/suites.sh: the tcp suite's network namespace
    if [[ -n $WORK_DIR && -d $WORK_DIR ]]; then
        # Keep the generated configs and the logs of the processes with the raw results.
        if [[ -n ${RUN_DIR:-} && -d ${RUN_DIR:-} ]]; then cp -r "$WORK_DIR" "$RUN_DIR/work" 2>/dev/null || true; fi
        rm -rf "$WORK_DIR"
    fi
    exit "$rc"
}

# Stop some of the started processes (a target's) and forget them.
stop_pids() {
    local pid keep=() p
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for _ in $(seq 1 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    for p in "${STARTED_PIDS[@]}"; do
        [[ " $* " == *" $p "* ]] || keep+=("$p")
    done
    STARTED_PIDS=("${keep[@]}")
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Print the HTTP status of GET http://127.0.0.1:$1$2 with Host: $3 (000 if no answer).
http_status() {
    local port=$1 path=$2 host=$3
    if command -v curl >/dev/null; then
        curl -s -o /dev/null -m 2 -w '%{http_code}' -H "Host: $host" "http://127.0.0.1:$port$path" || true
        return 0
    fi
    # Fallback without curl: a raw HTTP/1.1 request over bash's /dev/tcp.
    local line
    line=$(
        exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 0
        printf 'GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$path" "$host" >&3
        timeout 2 head -n1 <&3
    ) 2>/dev/null || true
    [[ $line =~ ^HTTP/[0-9.]+\ ([0-9]{3}) ]] && echo "${BASH_REMATCH[1]}" || echo 000
}

# Wait until GET $2 on port $1 (Host: $3) answers 200; $4 = pid that must stay alive, $5 = log.
wait_http_ok() {
    local port=$1 path=$2 host=$3
    shift 3
    wait_until "$@" http_ok "$port" "$path" "$host"
}
http_ok() { [[ $(http_status "$@") == 200 ]]; }

# Wait until the command "$3..." succeeds; $1 = pid that must stay alive, $2 = its log.
wait_until() {
    local pid=$1 logfile=$2
    shift 2
    for _ in $(seq 1 300); do
        "$@" && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            log "process $pid exited; last lines of $logfile:"
            tail -n 20 "$logfile" >&2 || true
            return 1
        fi
        sleep 0.1
    done
    log "no success from '$*' after 30s; last lines of $logfile:"
    tail -n 20 "$logfile" >&2 || true
    return 1
}

# All pids of the process tree rooted at $1 (nginx: master + worker).
tree_pids() {
    local pid=$1 child
    echo "$pid"
    for child in $(pgrep -P "$pid" || true); do tree_pids "$child"; done
}

# The helpers below set REPLY instead of printing, so that they run in the script's own
# process: a command substitution would fork, and forks during a measurement window blur the
# CPU accounting. Times are in clock ticks (CLK_TCK per second).

# REPLY = utime+stime of process $1 (all its threads). Fails if the process is gone.
proc_ticks() {
    local line
    read -r line 2>/dev/null <"/proc/$1/stat" || return 1
    local -a f
    read -ra f <<<"${line##*) }" # f[0] is field 3 (state); field N is f[N-3]
    REPLY=$((f[11] + f[12]))
}

# REPLY = sum of proc_ticks over the pids given. Fails if one is gone.
sum_ticks() {
    local total=0 pid
    for pid in "$@"; do
        proc_ticks "$pid" || return 1
        total=$((total + REPLY))
    done
    REPLY=$total
}

# REPLY = CPU of this script plus all the children it has reaped (utime+stime+cutime+cstime).
# oha runs as a child of this script, so its CPU shows up here once it has exited.
self_ticks() {
    local line
    read -r line <"/proc/$MAIN_PID/stat"
    local -a f
    read -ra f <<<"${line##*) }"
    REPLY=$((f[11] + f[12] + f[13] + f[14]))
}

# Machine-wide CPU from the first line of /proc/stat. Sets IDLE_TICKS (idle + iowait + steal:
# time no process of this machine ran) and BUSY_TICKS (user+nice+system+irq+softirq).
#
# The busy time of a measurement window is computed as (cores x wall time) - idle, not from
# BUSY_TICKS: the busy fields are sampled at the timer tick, and processes that wake on a 1 ms
# timer are caught running at the tick more or less often than they run (in a quiet run the
# tick-based "other" ranged from -15% to +9% of a core), whereas idle time is measured exactly
# on a tickless kernel, and so is a process's utime+stime (scaled to its exact runtime).
# Softirq work (loopback TCP) is charged to the process it interrupted on both sides.
# BUSY_TICKS is kept in the raw data for comparison.
machine_ticks() {
    local _cpu user nice system idle iowait irq softirq steal _rest
    read -r _cpu user nice system idle iowait irq softirq steal _rest </proc/stat
    IDLE_TICKS=$((idle + iowait + steal))
    BUSY_TICKS=$((user + nice + system + irq + softirq))
    STEAL_TICKS=$steal # time the hypervisor did not run our vCPUs
}

# REPLY = sum of VmRSS (KiB) over the pids given.
rss_kib() {
    local total=0 pid k v _u
    for pid in "$@"; do
        while read -r k v _u; do
            if [[ $k == VmRSS: ]]; then
                total=$((total + v))
                break
            fi
        done <"/proc/$pid/status"
    done
    REPLY=$total
}

# Snapshot of every process's CPU (own + reaped children) into the named associative array,
# used to name the culprits when a measurement was disturbed.
snapshot_all_procs() {
    local -n _snap=$1
    _snap=()
    local f line pid comm
    local -a v
    for f in /proc/[0-9]*/stat; do
        read -r line 2>/dev/null <"$f" || continue
        pid=${line%% *}
        comm=${line#*(}
        comm=${comm%)*}
        read -ra v <<<"${line##*) }"
        # shellcheck disable=SC2004 # an associative array: the key is the pid's text
        _snap[$pid]="$((v[11] + v[12] + v[13] + v[14])) ${comm// /_}"
    done
}

# ---------------------------------------------------------------------------------------------
# Setup: tools, build, results directory
# ---------------------------------------------------------------------------------------------

install_tools() {
    local missing=() tool
    local tools=(haproxy jq curl taskset pgrep)
    has_suite http1 && tools+=(nginx)
    for tool in "${tools[@]}"; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    if ((${#missing[@]} > 0)); then
        ((INSTALL)) || die "missing tools: ${missing[*]} (run without --no-install)"
        log "installing Debian packages for: ${missing[*]}"
        local sudo=""
        [[ $(id -u) -eq 0 ]] || sudo="sudo"
        $sudo apt-get update
        # util-linux has taskset, procps has pgrep; both are normally present already.
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y haproxy nginx jq curl util-linux procps
    fi
    install_suite_tools # bench/suites.sh: h2load, nghttpd, redis, grpcio
    has_suite http1 || return 0
    if ! command -v oha >/dev/null; then
        ((INSTALL)) || die "oha is not on PATH (run without --no-install, or cargo install oha --locked)"
        log "installing the load generator: cargo install oha --locked"
        cargo install oha --locked
    fi
}

build_binaries() {
    local pkgs=() need_echo=0
    if has_suite http1 || has_suite grpc; then need_echo=1 pkgs+=(-p mesh-e2e); fi
    if has_target mesh-1hop || has_target mesh-2hop || has_mtls_target; then pkgs+=(-p mesh-proxy); fi
    # The controller only certifies the sidecars and serves discovery (it is idle while the
    # figures are taken): BENCH_CONTROLLER_BIN may name another build of it.
    if has_mtls_target && [[ -z ${BENCH_CONTROLLER_BIN:-} ]]; then pkgs+=(-p mesh-controller); fi
    if ((BUILD && ${#pkgs[@]} > 0)); then
        log "building: cargo build --release ${pkgs[*]} (fat LTO: this takes a few minutes)"
        (cd "$ROOT" && cargo build --release "${pkgs[@]}")
    fi
    # cargo puts binaries in target/release unless CARGO_TARGET_DIR says otherwise.
    local target_dir=${CARGO_TARGET_DIR:-$ROOT/target}
    ECHO_BIN=$target_dir/release/mesh-echo
    PROXY_BIN=$target_dir/release/mesh-proxy
    CONTROLLER_BIN=${BENCH_CONTROLLER_BIN:-$target_dir/release/mesh-controller}
    ((!need_echo)) || [[ -x $ECHO_BIN ]] || die "$ECHO_BIN not found (build with cargo build --release -p mesh-e2e)"
    if has_target mesh-1hop || has_target mesh-2hop || has_mtls_target; then
        [[ -x $PROXY_BIN ]] || die "$PROXY_BIN not found (build with cargo build --release -p mesh-proxy)"
    fi
    if has_mtls_target; then
        [[ -x $CONTROLLER_BIN ]] || die "$CONTROLLER_BIN not found (build with cargo build --release -p mesh-controller, or name one in BENCH_CONTROLLER_BIN)"
    fi
}

check_machine() {
    local ncpu
    ncpu=$(nproc --all)
    NCPU=$(grep -c '^cpu[0-9]' /proc/stat) # online cores, as counted in /proc/stat
    ((ncpu >= 2)) || die "needs at least 2 cores (proxy on one, load generator + upstream on the other)"
    ((ncpu == 2)) || log "note: $ncpu cores; only cores $PROXY_CORE and $LOAD_CORE are used"
    CLK_TCK=$(getconf CLK_TCK)
    # HAProxy refuses a maxconn it cannot back with file descriptors; raise the limit if we can.
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    NOFILE=$(ulimit -n)
    local port
    for port in "$UPSTREAM_PORT" "$HAPROXY_PORT" "$NGINX_PORT" "$MESH1_OUT" "$MESH1_IN" "$MESH1_ADMIN" \
        "$MESH2S_OUT" "$MESH2S_IN" "$MESH2S_ADMIN" "$MESH2C_OUT" "$MESH2C_IN" "$MESH2C_ADMIN" \
        "$NGHTTPD_PORT" "$GRPCIO_PORT" "$REDIS_PORT" "$CTRL_GRPC" "$CTRL_ADMIN"; do
        port_open "$port" && die "127.0.0.1:$port is already in use (set BENCH_PORT_BASE)"
    done
    return 0
}

make_dirs() {
    RUN_ID=$(date +%Y%m%d-%H%M%S)
    RUN_DIR=$BENCH_DIR/results/$RUN_ID
    mkdir -p "$RUN_DIR"
    ln -sfn "$RUN_ID" "$BENCH_DIR/results/latest"
    WORK_DIR=$(mktemp -d /tmp/mesh-bench.XXXXXX)
    MEASUREMENTS=$RUN_DIR/measurements.tsv
    printf '%s\n' "target	kind	rate	elapsed_s	responses	ok	errors	rps	p50_s	p99_s	p999_s	target_ticks	cpu_us_per_req	target_core_pct	rss_idle_kib	rss_load_kib	other_cpu_pct	noisy	other_cpu_pct_tick_sampled	steal_pct	repeat	suite	mean_s" >"$MEASUREMENTS"
}

record_environment() {
    {
        echo "date: $(date -Is)"
        echo "host: $(uname -srm)"
        echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') x $(nproc --all)"
        echo "git: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo 'no commit')$(cd "$ROOT" && [[ -n $(git status --porcelain 2>/dev/null) ]] && echo ' (dirty)')"
        echo "oha: $(oha --version 2>/dev/null | head -n1)"
        echo "haproxy: $(haproxy -v 2>/dev/null | head -n1)"
        echo "nginx: $(nginx -v 2>&1 | head -n1)"
        if has_mtls_target; then echo "mesh-controller (mesh-2hop-mtls): $CONTROLLER_BIN"; fi
        record_suite_environment # bench/suites.sh
        echo "duration: $DURATION  warmup: $WARMUP  concurrency: $CONCURRENCY  rates: $RATES  rate-connections: $RATE_CONNECTIONS  new-connection concurrency: $CONN_CONCURRENCY  repeat: $REPEAT"
        echo "cores: proxy=$PROXY_CORE load+upstream=$LOAD_CORE  max-other-cpu: ${MAX_OTHER_CPU}% max-steal: ${MAX_STEAL}% (retries $NOISE_RETRIES)  force: $FORCE  quick: $QUICK"
        echo "targets: $TARGETS  suites: $SUITES"
        echo "nofile: $NOFILE  clk_tck: $CLK_TCK"
    } >"$RUN_DIR/env.txt"
}

# Before starting, make sure the machine is quiet: a busy machine would fail every measurement.
preflight_quiet_check() {
    local i0 i1 st0 st1 s0 s1 t0 t1 pct steal
    t0=$EPOCHREALTIME
    machine_ticks; i0=$IDLE_TICKS st0=$STEAL_TICKS
    self_ticks; s0=$REPLY
    sleep 2
    self_ticks; s1=$REPLY
    machine_ticks; i1=$IDLE_TICKS st1=$STEAL_TICKS
    t1=$EPOCHREALTIME
    read -r pct steal < <(awk -v idle="$((i1 - i0))" -v self="$((s1 - s0))" -v steal="$((st1 - st0))" \
        -v t0="$t0" -v t1="$t1" -v hz="$CLK_TCK" -v ncpu="$NCPU" 'BEGIN {
            el = t1 - t0
            printf "%.1f %.1f\n", 100 * (ncpu * el * hz - idle - self) / (el * hz), 100 * steal / (el * hz)
        }')
    log "machine idle check: other processes used ${pct}% of a core, steal ${steal}%"
    if awk -v p="$pct" -v m="$MAX_OTHER_CPU" -v st="$steal" -v ms="$MAX_STEAL" 'BEGIN { exit !(p > m || st > ms) }'; then
        if ((FORCE)); then
            log "warning: the machine is busy (--force given, going on)"
        else
            die "the machine is busy before the benchmark (${pct}% of a core used by other processes, limit ${MAX_OTHER_CPU}%; steal ${steal}%, limit ${MAX_STEAL}%). Stop them (a cargo build?) or pass --force."
        fi
    fi
}

# ---------------------------------------------------------------------------------------------
# The processes under test
# ---------------------------------------------------------------------------------------------

UPSTREAM_PID=""
# The current suite's settings, which the start_<target> functions and measure() follow
# (bench/suites.sh sets them for the other suites):
SUITE=http1
UPSTREAM_PIDS=()        # the upstream's processes (CPU counted as "ours", not as noise)
UP_PORT=""              # the upstream port mesh-proxy forwards to inbound, and HAProxy's server
MESH_ROUTES=()          # "authority port" pairs: the services of the mesh-proxy static file
HAPROXY_MODE=http1      # http1 | h2 | tcp
LOAD_TOOL=oha           # measure() calls run_load_$LOAD_TOOL and parse_load_$LOAD_TOOL

# Wait until the current target answers on port $1 ($2 = pid that must stay alive, $3 = log):
# for http1 a 200 to GET / with our Host, for the other suites their own probe_<suite>.
target_ready() {
    if [[ $SUITE == http1 ]]; then
        wait_http_ok "$1" / "$HOST_HEADER" "$2" "$3"
    else
        wait_until "$2" "$3" "probe_$SUITE" "$1"
    fi
}

use_http1_suite() {
    SUITE=http1
    UPSTREAM_PIDS=("$UPSTREAM_PID")
    UP_PORT=$UPSTREAM_PORT
    MESH_ROUTES=("$HOST_HEADER 127.0.0.1:$UPSTREAM_PORT")
    HAPROXY_MODE=http1
    LOAD_TOOL=oha
}

start_upstream() {
    local logf=$WORK_DIR/upstream.log
    taskset -c "$LOAD_CORE" "$ECHO_BIN" serve --listen "127.0.0.1:$UPSTREAM_PORT" --name up --quiet \
        >"$logf" 2>&1 &
    UPSTREAM_PID=$!
    STARTED_PIDS+=("$UPSTREAM_PID")
    wait_http_ok "$UPSTREAM_PORT" / "$HOST_HEADER" "$UPSTREAM_PID" "$logf" || die "the upstream did not start"
    log "upstream mesh-echo on 127.0.0.1:$UPSTREAM_PORT (pid $UPSTREAM_PID, core $LOAD_CORE)"
}

# Each start_<target> sets TARGET_PIDS (the processes whose CPU and memory are measured, empty
# for direct), TARGET_PORT (where oha sends) and TARGET_LABEL.

start_direct() {
    TARGET_PIDS=()
    TARGET_PORT=$UP_PORT
    TARGET_LABEL="direct (no proxy)"
}

start_haproxy() {
    local cfg=$WORK_DIR/haproxy.cfg logf=$WORK_DIR/haproxy.log
    # maxconn needs about 2 fds per connection (client side + server side).
    local maxconn=$(((NOFILE - 200) / 2))
    ((maxconn > 4096)) && maxconn=4096
    # http1: HTTP/1.1 both sides; h2: HTTP/2 (h2c, prior knowledge) both sides; tcp: bytes.
    local mode=http bind_proto="" server_proto="" keepalive="    option http-keep-alive
    # reuse idle upstream connections across client connections (a connection pool)
    http-reuse always"
    case $HAPROXY_MODE in
        h2) bind_proto=" proto h2" server_proto=" proto h2" ;;
        tcp) mode=tcp keepalive="" ;;
    esac
    cat >"$cfg" <<EOF
# Generated by bench/run.sh ($SUITE suite): a plain reverse proxy, the equivalent of one
# mesh-proxy hop.
global
    nbthread 1
    maxconn $maxconn
    # no "log" line: no logging, like the mesh-proxy at MESH_PROXY_LOG=warn

defaults
    mode $mode
    timeout connect 5s
    timeout client 60s
    timeout server 60s
$keepalive

frontend bench
    bind 127.0.0.1:$HAPROXY_PORT$bind_proto
    default_backend upstream

backend upstream
    server up 127.0.0.1:$UP_PORT$server_proto
EOF
    haproxy -c -q -f "$cfg" >"$logf" 2>&1 || {
        cat "$logf" >&2
        die "haproxy rejected its configuration"
    }
    # -db: stay in the foreground, no daemon, no master process.
    taskset -c "$PROXY_CORE" haproxy -db -f "$cfg" >>"$logf" 2>&1 &
    local pid=$!
    STARTED_PIDS+=("$pid")
    target_ready "$HAPROXY_PORT" "$pid" "$logf" || die "haproxy did not start"
    mapfile -t TARGET_PIDS < <(tree_pids "$pid")
    TARGET_PORT=$HAPROXY_PORT
    TARGET_LABEL="HAProxy $(haproxy -v | awk 'NR==1 {print $3}')"
    case $HAPROXY_MODE in
        h2) TARGET_LABEL+=" (h2 both sides)" ;;
        tcp) TARGET_LABEL+=" (mode tcp)" ;;
    esac
}

start_nginx() {
    local dir=$WORK_DIR/nginx logf=$WORK_DIR/nginx/error.log
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<EOF
# Generated by bench/run.sh: a plain HTTP reverse proxy, the equivalent of one mesh-proxy hop.
daemon off;
worker_processes 1;
worker_rlimit_nofile $NOFILE;
pid $dir/nginx.pid;
error_log $logf warn;

events {
    worker_connections 4096;
}

http {
    access_log off;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;

    # nginx closes a keep-alive connection after 1000 requests by default, on both sides;
    # that would make it reconnect all the time under load.
    keepalive_requests 10000000;
    keepalive_timeout 60s;

    upstream upstream {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 256;
        keepalive_requests 10000000;
        keepalive_timeout 60s;
    }

    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
        }
    }
}
EOF
    nginx -t -q -p "$dir" -e "$logf" -c "$dir/nginx.conf" >"$dir/stdout.log" 2>&1 || {
        cat "$dir/stdout.log" "$logf" >&2
        die "nginx rejected its configuration"
    }
    taskset -c "$PROXY_CORE" nginx -p "$dir" -e "$logf" -c "$dir/nginx.conf" >>"$dir/stdout.log" 2>&1 &
    local pid=$!
    STARTED_PIDS+=("$pid")
    wait_http_ok "$NGINX_PORT" / "$HOST_HEADER" "$pid" "$logf" || die "nginx did not start"
    mapfile -t TARGET_PIDS < <(tree_pids "$pid") # master + the one worker
    ((${#TARGET_PIDS[@]} == 2)) || log "warning: expected nginx master + 1 worker, found ${#TARGET_PIDS[@]} processes"
    TARGET_PORT=$NGINX_PORT
    TARGET_LABEL="nginx $(nginx -v 2>&1 | sed 's/.*nginx\///')"
}

# Start one mesh-proxy: $1 name, $2 outbound, $3 inbound, $4 admin port, $5 static config file
# (empty: none; then MESH_PROXY_ENV names the controller). Inbound traffic goes to
# 127.0.0.1:$UP_PORT. The array MESH_PROXY_ENV adds VAR=value settings (controller, identity).
# A command prefix in the array MESH_PROXY_WRAP (ip netns exec ..., setpriv ...) runs it
# elsewhere; it must exec, so that $! is the proxy. The first MESH_PROXY_NS_ARGS words of it
# are also put before the readiness check. Sets REPLY to its pid.
MESH_PROXY_WRAP=()
MESH_PROXY_NS_ARGS=0
MESH_PROXY_ENV=()
start_mesh_proxy() {
    local name=$1 out=$2 in=$3 admin=$4 config=$5 logf=$WORK_DIR/$1.log
    local settings=(MESH_PROXY_OUTBOUND_ADDR="127.0.0.1:$out" MESH_PROXY_INBOUND_ADDR="127.0.0.1:$in"
        MESH_PROXY_INBOUND_FORWARD="127.0.0.1:$UP_PORT" MESH_PROXY_ADMIN_ADDR="127.0.0.1:$admin"
        MESH_PROXY_LOG=warn "${MESH_PROXY_ENV[@]}")
    [[ -z $config ]] || settings+=(MESH_PROXY_STATIC_CONFIG="$config")
    # env execs the rest, so $! is the proxy's pid.
    env "${settings[@]}" "${MESH_PROXY_WRAP[@]}" taskset -c "$PROXY_CORE" "$PROXY_BIN" >"$logf" 2>&1 &
    local pid=$!
    STARTED_PIDS+=("$pid")
    wait_until "$pid" "$logf" "${MESH_PROXY_WRAP[@]:0:MESH_PROXY_NS_ARGS}" \
        curl -sf -o /dev/null -m 2 "http://127.0.0.1:$admin/ready" ||
        die "mesh-proxy '$name' did not become ready on 127.0.0.1:$admin/ready (run with --targets direct,haproxy,nginx to skip the mesh)"
    log "mesh-proxy '$name' ready (pid $pid, outbound :$out, inbound :$in, admin :$admin)"
    REPLY=$pid
}

# The services of MESH_ROUTES as a static file; $1 = extra endpoint line (a hint) or empty.
mesh_services() {
    local route hint=$1
    echo "services:"
    for route in "${MESH_ROUTES[@]}"; do
        printf '  - authority: "%s"\n    endpoints:\n      - addr: "%s"\n' "${route% *}" "${route#* }"
        [[ -z $hint ]] || printf '        %s\n' "$hint"
    done
}

start_mesh-1hop() {
    local cfg=$WORK_DIR/mesh-1hop.yaml port=$MESH1_OUT label="mesh-proxy, 1 hop"
    local fails="mesh-proxy does not route $HOST_HEADER to the upstream"
    if [[ $SUITE == tcp ]]; then
        # Opaque TCP has no Host header, so explicit mode cannot route it: one hop is the
        # proxy's inbound listener (protocol detection; redis clients speak first) forwarding
        # to redis. Without an original destination (iptables) an outbound opaque
        # connection has nowhere to go.
        printf 'services: []\n' >"$cfg"
        port=$MESH1_IN label="mesh-proxy, 1 hop (inbound, detected)"
        fails="mesh-proxy's inbound listener does not forward to redis"
    else
        {
            echo "# one hop: the outbound side connects straight to the upstream"
            mesh_services ""
        } >"$cfg"
    fi
    start_mesh_proxy mesh-1hop "$MESH1_OUT" "$MESH1_IN" "$MESH1_ADMIN" "$cfg"
    TARGET_PIDS=("$REPLY")
    TARGET_PORT=$port
    TARGET_LABEL=$label
    target_ready "$TARGET_PORT" "$REPLY" "$WORK_DIR/mesh-1hop.log" || die "$fails"
}

start_mesh-2hop() {
    if [[ $(type -t "start_${SUITE}_mesh-2hop") == function ]]; then
        "start_${SUITE}_mesh-2hop" # the tcp suite's own two hops
        return
    fi
    local server_cfg=$WORK_DIR/mesh-2hop-server.yaml client_cfg=$WORK_DIR/mesh-2hop-client.yaml
    # The server sidecar only needs its inbound side; give it an empty service list.
    printf 'services: []\n' >"$server_cfg"
    {
        echo "# two hops: the client sidecar sends HTTP/2 to the server sidecar's inbound port,"
        echo "# which forwards to the upstream"
        mesh_services "hint: { kind: meshed_h2, inbound_port: $MESH2S_IN }"
    } >"$client_cfg"
    start_mesh_proxy mesh-2hop-server "$MESH2S_OUT" "$MESH2S_IN" "$MESH2S_ADMIN" "$server_cfg"
    local server_pid=$REPLY
    start_mesh_proxy mesh-2hop-client "$MESH2C_OUT" "$MESH2C_IN" "$MESH2C_ADMIN" "$client_cfg"
    TARGET_PIDS=("$REPLY" "$server_pid")
    TARGET_PORT=$MESH2C_OUT
    TARGET_LABEL="mesh-proxy, 2 hops (both proxies)"
    target_ready "$TARGET_PORT" "$REPLY" "$WORK_DIR/mesh-2hop-client.log" ||
        die "the two-hop mesh path does not reach the upstream"
}

# Two hops with mTLS. A mesh-controller in local mode (on the load core; it is idle during the
# measurements: certificates live 24 h) holds the certificate authority and serves discovery:
# the Service echo.bench:8080 has one Workload, the upstream, behind the server sidecar, whose
# port a Server makes mTLS-only (`tls: strict`, so a plaintext fallback would fail the run
# instead of being measured). Each sidecar proves its identity with a join token
# (spiffe://cluster.local/ns/bench/sa/echo and .../sa/client); the client sidecar learns the
# server's identity from discovery and checks it. The default authorization policy
# (all-unauthenticated) applies: every request is still checked against it.
CTRL_PID=""
start_mesh-2hop-mtls() {
    local dir=$WORK_DIR/mesh-2hop-mtls
    local ident=$dir/identity logf=$WORK_DIR/mesh-controller.log
    mkdir -p "$dir/objects"
    cat >"$dir/objects/bench.yaml" <<EOF
# Generated by bench/run.sh: the upstream as a Workload behind the server sidecar.
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: bench}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 8080, targetPort: http}]
---
apiVersion: mesh.dev/v1alpha1
kind: Workload
metadata: {name: echo-1, namespace: bench, labels: {app: echo}}
spec: {address: 127.0.0.1, ports: [{name: http, port: $UP_PORT}], serviceAccount: echo, proxy: {inboundPort: $MESH2S_IN}}
---
apiVersion: mesh.dev/v1alpha1
kind: Server
metadata: {name: echo-http, namespace: bench}
spec: {selector: {app: echo}, port: http, tls: strict}
EOF
    "$CONTROLLER_BIN" identity init --dir "$ident" >"$dir/identity.log" 2>&1 || {
        cat "$dir/identity.log" >&2
        die "mesh-controller identity init failed"
    }
    local w
    for w in echo-1:echo client:client; do
        "$CONTROLLER_BIN" identity join-token --dir "$ident" --namespace bench \
            --service-account "${w#*:}" --workload "ns:bench/workload:${w%%:*}" \
            >"$ident/${w%%:*}.token" 2>>"$dir/identity.log" || {
            cat "$dir/identity.log" >&2
            die "mesh-controller identity join-token failed"
        }
    done
    MESH_CONTROLLER_LOG=warn taskset -c "$LOAD_CORE" "$CONTROLLER_BIN" --source local \
        --config-dir "$dir/objects" --identity-dir "$ident" \
        --grpc-addr "127.0.0.1:$CTRL_GRPC" --admin-addr "127.0.0.1:$CTRL_ADMIN" >"$logf" 2>&1 &
    CTRL_PID=$!
    STARTED_PIDS+=("$CTRL_PID")
    wait_until "$CTRL_PID" "$logf" curl -sf -o /dev/null -m 2 "http://127.0.0.1:$CTRL_ADMIN/ready" ||
        die "mesh-controller did not become ready on 127.0.0.1:$CTRL_ADMIN/ready"
    log "mesh-controller ready (pid $CTRL_PID, gRPC :$CTRL_GRPC, core $LOAD_CORE)"

    local ctrl=MESH_PROXY_CONTROLLER_ADDR=http://127.0.0.1:$CTRL_GRPC
    MESH_PROXY_ENV=("$ctrl" MESH_PROXY_WORKLOAD=ns:bench/workload:echo-1
        MESH_PROXY_IDENTITY=spiffe://cluster.local/ns/bench/sa/echo
        MESH_PROXY_IDENTITY_TOKEN_FILE="$ident/echo-1.token")
    start_mesh_proxy mesh-2hop-mtls-server "$MESH2S_OUT" "$MESH2S_IN" "$MESH2S_ADMIN" ""
    local server_pid=$REPLY
    MESH_PROXY_ENV=("$ctrl" MESH_PROXY_WORKLOAD=ns:bench/workload:client
        MESH_PROXY_IDENTITY=spiffe://cluster.local/ns/bench/sa/client
        MESH_PROXY_IDENTITY_TOKEN_FILE="$ident/client.token")
    start_mesh_proxy mesh-2hop-mtls-client "$MESH2C_OUT" "$MESH2C_IN" "$MESH2C_ADMIN" ""
    MESH_PROXY_ENV=()
    TARGET_PIDS=("$REPLY" "$server_pid")
    TARGET_PORT=$MESH2C_OUT
    TARGET_LABEL="mesh-proxy, 2 hops mTLS (both proxies)"
    target_ready "$TARGET_PORT" "$REPLY" "$WORK_DIR/mesh-2hop-mtls-client.log" ||
        die "the two-hop mTLS path does not reach the upstream (logs: $WORK_DIR/mesh-2hop-mtls-*.log, $logf)"
    check_mtls
}

# The server sidecar of mesh-2hop-mtls must have taken mTLS connections from the client's
# identity and no plaintext one; otherwise the run would measure something else.
check_mtls() {
    local m tls plain
    m=$(curl -sf -m 2 "http://127.0.0.1:$MESH2S_ADMIN/metrics") || die "cannot read the server sidecar's /metrics"
    tls=$(awk '/^mesh_proxy_peer_connections_total[{]direction="inbound".*peer_id="spiffe:[/][/]cluster.local[/]ns[/]bench[/]sa[/]client".*tls="true"/ { s += $NF } END { print s + 0 }' <<<"$m")
    plain=$(awk '/^mesh_proxy_peer_connections_total[{]direction="inbound".*tls="false"/ { s += $NF } END { print s + 0 }' <<<"$m")
    ((tls > 0 && plain == 0)) ||
        die "mesh-2hop-mtls is not mTLS: the server sidecar counted $tls mTLS connections from the client's identity and $plain plaintext ones (mesh_proxy_peer_connections_total)"
    log "  mTLS checked: the server sidecar took $tls mTLS connection(s) from spiffe://cluster.local/ns/bench/sa/client, none in plaintext"
}

stop_http1_target() {
    if [[ -n $CTRL_PID ]]; then
        stop_pids "$CTRL_PID"
        CTRL_PID=""
    fi
}

# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------

# Run oha against the current target on the load core. $1 = output file, rest = extra args.
run_load_oha() { run_oha "$@"; }
run_oha() {
    local out=$1
    shift
    taskset -c "$LOAD_CORE" oha --no-tui --output-format json --worker-threads 1 \
        --host "$HOST_HEADER" "$@" "http://127.0.0.1:$TARGET_PORT/" >"$out" 2>"$out.stderr"
}

# Sample the VmRSS of the target while oha runs; writes the maximum (KiB) to $1.
rss_sampler() {
    local out=$1 max=0 sleep_fd
    trap 'exit 0' TERM
    exec {sleep_fd}<> <(:) # "read -t" on a pipe nobody writes to: a sleep without forking
    while :; do
        rss_kib "${TARGET_PIDS[@]}" 2>/dev/null || true
        if ((REPLY > max)); then max=$REPLY; fi
        echo "$max" >"$out"
        read -r -t 0.2 -u "$sleep_fd" || true
    done
}

# Read oha's JSON output $1: sets L_RESPONSES (answers), L_OK (200s), L_ERRORS (failed requests
# and non-200 answers), L_TOTAL (the run's duration in s, for req/s), L_P50/L_P99/L_P999/L_MEAN (s).
# Every load tool has such a parse_load_<tool> (bench/suites.sh for h2load, redis, grpcio).
parse_load_oha() {
    local out=$1
    # Errors "aborted due to deadline" are the requests in flight when the duration ended;
    # they are not failures.
    read -r L_RESPONSES L_OK L_ERRORS L_TOTAL L_P50 L_P99 L_P999 L_MEAN < <(jq -r '[
        ([.statusCodeDistribution[]] | add // 0),
        (.statusCodeDistribution["200"] // 0),
        ((.errorDistribution | to_entries | map(select(.key != "aborted due to deadline") | .value) | add) // 0),
        .summary.total,
        (.latencyPercentiles.p50 // "nan"),
        (.latencyPercentiles.p99 // "nan"),
        (.latencyPercentiles["p99.9"] // "nan"),
        (.summary.average // "nan")
      ] | @tsv' "$out") || return 1
    L_ERRORS=$((L_ERRORS + L_RESPONSES - L_OK))
}

# One measurement: $1 target id, $2 kind (max|rate|...), $3 rate (empty for max), $4 raw output
# file, rest = arguments of the load tool (run_load_$LOAD_TOOL). Appends a row to
# measurements.tsv. If the machine was not quiet, it asks measure_quietly for a repeat
# (MEASURE_RETRY=1) or, out of repeats, exits.
measure() {
    local target=$1 kind=$2 rate=$3 out=$4
    shift 4
    # shellcheck disable=SC2034 # filled and read through namerefs
    local -A procs0 procs1
    local t0 t1 b0 b1 i0 i1 st0 st1 s0 s1 p0 p1 u0 u1 sampler="" rss_file=$out.rss
    snapshot_all_procs procs0

    # Before: wall clock, machine busy ticks, our ticks, the target's and the upstream's.
    t0=$EPOCHREALTIME
    machine_ticks; b0=$BUSY_TICKS i0=$IDLE_TICKS st0=$STEAL_TICKS
    sum_ticks "${TARGET_PIDS[@]}" || die "a $target process has exited (see $WORK_DIR)"
    p0=$REPLY
    sum_ticks "${UPSTREAM_PIDS[@]}" || die "the upstream has exited"
    u0=$REPLY
    if [[ $kind != rate && ${#TARGET_PIDS[@]} -gt 0 ]]; then # throughput runs (max, tcp tests, grpc)
        rss_sampler "$rss_file" &
        sampler=$!
    fi
    self_ticks; s0=$REPLY

    local oha_rc=0
    "run_load_$LOAD_TOOL" "$out" "$@" || oha_rc=$?

    if [[ -n $sampler ]]; then
        kill -TERM "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true # reaped: its CPU joins ours
    fi
    # After.
    self_ticks; s1=$REPLY
    machine_ticks; b1=$BUSY_TICKS i1=$IDLE_TICKS st1=$STEAL_TICKS
    sum_ticks "${TARGET_PIDS[@]}" || die "a $target process exited during the measurement (see $RUN_DIR/work)"
    p1=$REPLY
    sum_ticks "${UPSTREAM_PIDS[@]}" || die "the upstream exited during the measurement"
    u1=$REPLY
    t1=$EPOCHREALTIME
    snapshot_all_procs procs1

    ((oha_rc == 0)) || {
        cat "$out.stderr" >&2
        die "$LOAD_TOOL failed ($oha_rc) against $target"
    }

    # What the load generator saw.
    "parse_load_$LOAD_TOOL" "$out" || die "cannot read $LOAD_TOOL's output $out"
    local responses=$L_RESPONSES ok=$L_OK errors=$L_ERRORS total=$L_TOTAL p50=$L_P50 p99=$L_P99 p999=$L_P999
    ((ok > 0)) || die "no successful response from $target (see $out)"

    local rss_idle=${TARGET_RSS_IDLE:-0} rss_load=0
    [[ -f $rss_file ]] && rss_load=$(<"$rss_file")

    # Derived figures, and the CPU used by everyone else during the window.
    local row other other_ticks noisy=0
    row=$(awk -v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" -v ncpu="$NCPU" \
        -v idle="$((i1 - i0))" -v busy_ticks="$((b1 - b0))" -v steal="$((st1 - st0))" \
        -v self="$((s1 - s0))" -v tgt="$((p1 - p0))" -v up="$((u1 - u0))" \
        -v resp="$responses" -v total="$total" 'BEGIN {
            el = t1 - t0
            ours = self + tgt + up
            other = 100 * (ncpu * el * hz - idle - ours) / (el * hz)
            other_ticks = 100 * (busy_ticks - ours) / (el * hz)
            rps = resp / total
            cpu_us = resp > 0 ? tgt / hz * 1e6 / resp : 0
            core = 100 * tgt / (total * hz)
            steal_pct = 100 * steal / (el * hz)
            printf "%.3f\t%.1f\t%.3f\t%.1f\t%.1f\t%.1f\t%.1f", el, rps, cpu_us, core, other, other_ticks, steal_pct
        }')
    local elapsed rps cpu_us core_pct steal_pct
    IFS=$'\t' read -r elapsed rps cpu_us core_pct other other_ticks steal_pct <<<"$row"
    if awk -v o="$other" -v m="$MAX_OTHER_CPU" -v st="$steal_pct" -v ms="$MAX_STEAL" \
        'BEGIN { exit !(o > m || st > ms) }'; then
        noisy=1
        log "during $target/$kind${rate:+ $rate}: other processes used ${other}% of a core (limit ${MAX_OTHER_CPU}%), the hypervisor stole ${steal_pct}% (limit ${MAX_STEAL}%); top users here:"
        report_culprits procs0 procs1 "$elapsed" >&2
        if ((!FORCE)); then
            if ((MEASURE_ATTEMPT < NOISE_RETRIES)); then
                log "discarding this measurement; retrying in ${NOISE_BACKOFF}s ($((MEASURE_ATTEMPT + 1))/$NOISE_RETRIES)"
                MEASURE_RETRY=1
                sleep "$NOISE_BACKOFF"
                return 0
            fi
            die "refusing to report: the machine was not quiet, even after $NOISE_RETRIES retries. Stop the other work (or wait for the host to calm down) and run again, or pass --force to report anyway (marked NOISY). Raw data so far: $RUN_DIR"
        fi
        NOISY_NOTES+=("$target $kind${rate:+ $rate}/s: other processes used ${other}% of a core, steal ${steal_pct}%")
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$target" "$kind" "$rate" "$elapsed" "$responses" "$ok" "$errors" "$rps" "$p50" "$p99" "$p999" \
        "$((p1 - p0))" "$cpu_us" "$core_pct" "$rss_idle" "$rss_load" "$other" "$noisy" "$other_ticks" "$steal_pct" "$REPEAT_INDEX" \
        "$SUITE" "$L_MEAN" >>"$MEASUREMENTS"
    log "  $kind${rate:+ @$rate/s}: ${rps} req/s, mean $(us "$L_MEAN") p50 $(us "$p50") p99 $(us "$p99") p99.9 $(us "$p999"), errors $errors, proxy CPU ${cpu_us}us/req, proxy core ${core_pct}%, others ${other}%, steal ${steal_pct}%"
}

us() { awk -v s="$1" 'BEGIN { if (s == "nan" || s == "") print "n/a"; else printf "%.0fus", s * 1e6 }'; }

# Print the processes (other than ours) that used the most CPU between two snapshots.
report_culprits() {
    local -n _a=$1 _b=$2
    local el=$3 pid
    for pid in "${!_b[@]}"; do
        local nb=${_b[$pid]%% *} na=0 # a process started during the window counts whole
        [[ -n ${_a[$pid]:-} ]] && na=${_a[$pid]%% *}
        if ((nb > na)); then printf '%s %s %s\n' "$((nb - na))" "$pid" "${_b[$pid]#* }"; fi
    done | sort -rn | head -n 8 | awk -v hz="$CLK_TCK" -v el="$el" \
        '{ printf "    %6.1f%% of a core  pid %-7s %s\n", 100 * $1 / (el * hz), $2, $3 }'
    echo "    (includes the processes under test; short-lived ones show under their parent once reaped)"
}

NOISY_NOTES=()
MEASURE_ATTEMPT=0
MEASURE_RETRY=0
REPEAT_INDEX=1

# measure, repeated (up to NOISE_RETRIES times) while other processes disturb it.
measure_quietly() {
    for ((MEASURE_ATTEMPT = 0; ; MEASURE_ATTEMPT++)); do
        MEASURE_RETRY=0
        measure "$@"
        ((MEASURE_RETRY)) || break
    done
}

# All measurements for one target.
bench_target() {
    local target=$1
    log "=== $target ==="
    "start_$target"
    TARGET_RSS_IDLE=0
    if ((${#TARGET_PIDS[@]} > 0)); then
        rss_kib "${TARGET_PIDS[@]}"
        TARGET_RSS_IDLE=$REPLY
        log "  $TARGET_LABEL: pids ${TARGET_PIDS[*]}, idle RSS $((TARGET_RSS_IDLE / 1024)) MiB"
    fi
    echo "$target	$TARGET_LABEL	$SUITE" >>"$RUN_DIR/labels.tsv"

    # Warm up (connection pools, caches, allocator) at the same concurrency.
    run_oha "$RUN_DIR/$target-warmup.json" -c "$CONCURRENCY" -z "$WARMUP" || die "warm-up against $target failed"

    local rate suffix
    for ((REPEAT_INDEX = 1; REPEAT_INDEX <= REPEAT; REPEAT_INDEX++)); do
        suffix=""
        ((REPEAT == 1)) || suffix="-$REPEAT_INDEX"
        measure_quietly "$target" max "" "$RUN_DIR/$target-max$suffix.json" -c "$CONCURRENCY" -z "$DURATION"
        for rate in $RATES; do
            measure_quietly "$target" rate "$rate" "$RUN_DIR/$target-rate$rate$suffix.json" \
                -q "$rate" --latency-correction -c "$RATE_CONNECTIONS" -z "$DURATION"
        done
        # The cost of a new connection between the two sidecars (for mTLS a full handshake on
        # both): an HTTP/1.1 upgrade request gets a connection of its own from the client
        # sidecar, which is closed when the answer (a plain 200 from mesh-echo) is complete.
        if [[ $target == mesh-2hop* ]] && ((CONN_CONCURRENCY > 0)); then
            measure_quietly "$target" conn "" "$RUN_DIR/$target-conn$suffix.json" \
                -c "$CONN_CONCURRENCY" -z "$DURATION" -H "Connection: upgrade" -H "Upgrade: mesh-bench"
        fi
    done
    if [[ $target == mesh-2hop-mtls ]]; then check_mtls; fi

    stop_target
}

# Stop the current target's processes (for nginx/haproxy the first pid is the parent).
stop_target() {
    if ((${#TARGET_PIDS[@]} > 0)); then
        local own=() p
        for p in "${TARGET_PIDS[@]}"; do
            [[ " ${STARTED_PIDS[*]} " == *" $p "* ]] && own+=("$p")
        done
        stop_pids "${own[@]}"
    fi
    if [[ $(type -t "stop_${SUITE}_target") == function ]]; then "stop_${SUITE}_target"; fi
    return 0
}

# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

write_report() {
    local report=$RUN_DIR/report.md
    {
        echo "# mesh-proxy benchmark, $(date '+%Y-%m-%d %H:%M')"
        echo
        if ((${#NOISY_NOTES[@]} > 0)); then
            echo "**NOISY RUN (reported with --force): other processes used CPU during measurements; do not trust these figures.**"
            printf -- '- %s\n' "${NOISY_NOTES[@]}"
            echo
        fi
        echo '```'
        cat "$RUN_DIR/env.txt"
        echo '```'
        echo
        if has_suite http1; then
            echo "# HTTP/1.1 (oha → mesh-echo)"
            echo
            awk -F'\t' -v conc="$CONCURRENCY" -v rates="$RATES" -v conn_conc="$CONN_CONCURRENCY" -f "$BENCH_DIR/report.awk" \
                "$RUN_DIR/labels.tsv" "$MEASUREMENTS"
        fi
        suites_report # bench/suites.sh
    } >"$report"
    cat "$report"
    log "raw results and report: $RUN_DIR"
}

# ---------------------------------------------------------------------------------------------

main() {
    parse_args "$@"
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    install_tools
    build_binaries
    check_machine
    make_dirs
    record_environment

    # From here on the script itself (and so oha, the sampler) runs on the load core; the
    # proxies are started with their own taskset.
    taskset -cp "$LOAD_CORE" "$MAIN_PID" >/dev/null

    preflight_quiet_check
    if has_suite http1 || has_suite grpc; then start_upstream; fi
    local target
    if has_suite http1; then
        use_http1_suite
        for target in ${ALL_TARGETS//,/ }; do
            if has_target "$target"; then bench_target "$target"; fi
        done
    fi
    run_other_suites # bench/suites.sh: h2, grpc, tcp
    write_report
}

main "$@"
