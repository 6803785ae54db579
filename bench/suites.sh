# bench/suites.sh: the h2, grpc and tcp suites of bench/run.sh (sourced by it; not a script).
#
# Every suite runs its targets one after the other like the http1 suite does, with the same
# placement (proxies on BENCH_PROXY_CORE, load generator and upstream on BENCH_LOAD_CORE), the
# same measure() (quiet-machine check, proxy CPU from /proc, RSS) and the same repeats/median.
# What differs is set through the suite variables of run.sh (SUITE, UPSTREAM_PIDS, UP_PORT,
# MESH_ROUTES, HAPROXY_MODE, LOAD_TOOL) and the functions here:
#
#   h2    h2load -> nghttpd (h2c): direct, mesh-1hop, mesh-2hop, HAProxy with proto h2 on both
#         sides. Max throughput (-n/-c/-m), CPU per request, latency at fixed rates (--rps).
#   grpc  one connection, one call at a time: HTTP/2 GET and POST (h2load) and unary gRPC
#         (h2load with a gRPC body; grpc_unary.py, a grpcio client loop) against mesh-echo,
#         then unary gRPC (h2load, grpcio client) against a grpcio server (grpc_unary.py serve).
#   tcp   redis-benchmark -> redis-server: direct, mesh-1hop (the proxy's inbound listener,
#         detection), mesh-2hop (transparent mode in a network namespace of its own: iptables
#         from `mesh-proxy init`, client sidecar as UID 2102 -> server sidecar's inbound),
#         HAProxy mode tcp.
# shellcheck shell=bash

parse_suite_settings() {
    local q=$QUICK
    H2_REQUESTS=${BENCH_H2_REQUESTS:-$((q ? 20000 : 100000))}
    H2_CLIENTS=${BENCH_H2_CLIENTS:-16}
    H2_STREAMS=${BENCH_H2_STREAMS:-10}
    H2_RATES=${BENCH_H2_RATES:-$RATES}
    H2_RATE_CLIENTS=${BENCH_H2_RATE_CLIENTS:-10}
    H2_BODY_BYTES=${BENCH_H2_BODY_BYTES:-64}
    GRPC_CALLS=${BENCH_GRPC_CALLS:-$((q ? 2000 : 20000))}
    GRPC_MSG_BYTES=${BENCH_GRPC_MSG_BYTES:-64}
    PYTHON=${BENCH_PYTHON:-python3}
    REDIS_REQUESTS=${BENCH_REDIS_REQUESTS:-$((q ? 50000 : 200000))}
    REDIS_CLIENTS=${BENCH_REDIS_CLIENTS:-50}
    REDIS_TESTS=${BENCH_REDIS_TESTS:-set get}
    SUITE_NUMBERS="$H2_REQUESTS $H2_CLIENTS $H2_STREAMS $H2_RATES $H2_RATE_CLIENTS $H2_BODY_BYTES $GRPC_CALLS $GRPC_MSG_BYTES $REDIS_REQUESTS $REDIS_CLIENTS"
    local r
    for r in $H2_RATES; do
        ((r % H2_RATE_CLIENTS == 0)) || die "BENCH_H2_RATES: $r is not a multiple of BENCH_H2_RATE_CLIENTS ($H2_RATE_CLIENTS): h2load's --rps is per connection"
    done
    # Seconds of DURATION (oha syntax: 10s, 1m, bare numbers were turned into seconds).
    DURATION_S=${DURATION%s}
    [[ $DURATION =~ ^([0-9]+)m$ ]] && DURATION_S=$((BASH_REMATCH[1] * 60))
    [[ $DURATION_S =~ ^[0-9]+$ ]] || die "BENCH_DURATION: the h2 suite needs whole seconds or minutes, got '$DURATION'"
}

# The tcp suite's network namespace (two hops, transparent mode), deleted on exit.
NETNS=""
NETNS_SERVICE_IP=10.201.0.2 # the "Service" address redis-benchmark connects to (never assigned)
NETNS_SERVICE_PORT=6379

suites_cleanup() {
    if [[ -n $NETNS ]]; then
        ip netns pids "$NETNS" 2>/dev/null | while read -r p; do kill -KILL "$p" 2>/dev/null || true; done
        ip netns del "$NETNS" 2>/dev/null || true
        NETNS=""
    fi
}

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------

install_suite_tools() {
    local pkgs=() tools=()
    if has_suite h2 || has_suite grpc; then
        command -v h2load >/dev/null || pkgs+=(nghttp2-client)
    fi
    if has_suite h2; then command -v nghttpd >/dev/null || pkgs+=(nghttp2-server); fi
    if has_suite tcp; then
        command -v redis-server >/dev/null || pkgs+=(redis-server)
        command -v redis-benchmark >/dev/null || pkgs+=(redis-tools)
        if [[ $(id -u) -eq 0 ]]; then command -v iptables >/dev/null || pkgs+=(iptables); fi
    fi
    if ((${#pkgs[@]} > 0)); then
        ((INSTALL)) || die "missing Debian packages: ${pkgs[*]} (run without --no-install)"
        log "installing Debian packages: ${pkgs[*]}"
        local sudo=""
        [[ $(id -u) -eq 0 ]] || sudo="sudo"
        $sudo apt-get update
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${pkgs[@]}"
        # The package starts a redis-server service on :6379 on a systemd machine. It is not
        # used (we start our own), but an idle redis still wakes 10 times a second: stop it.
        if [[ " ${pkgs[*]} " == *" redis-server "* ]] && [[ -d /run/systemd/system ]]; then
            log "stopping the redis-server service the package started (systemctl disable --now redis-server)"
            $sudo systemctl disable --now redis-server 2>/dev/null || true
        fi
    fi
    if has_suite grpc && ! "$PYTHON" -c 'import grpc' 2>/dev/null; then
        ((INSTALL)) || die "$PYTHON lacks grpcio (run without --no-install, or $PYTHON -m pip install grpcio)"
        log "installing grpcio: $PYTHON -m pip install grpcio"
        "$PYTHON" -m pip install grpcio
    fi
    for tools in haproxy curl; do command -v "$tools" >/dev/null || die "$tools is missing"; done
}

record_suite_environment() {
    has_suite h2 || has_suite grpc && echo "h2load: $(h2load --version 2>/dev/null | head -n1)"
    has_suite h2 && echo "nghttpd: $(nghttpd --version 2>/dev/null | head -n1)  h2: requests $H2_REQUESTS clients $H2_CLIENTS streams $H2_STREAMS rates $H2_RATES rate-clients $H2_RATE_CLIENTS body $H2_BODY_BYTES B"
    has_suite grpc && echo "grpcio: $("$PYTHON" -c 'import grpc, sys; print(grpc.__version__, "python", sys.version.split()[0])' 2>/dev/null)  grpc: calls $GRPC_CALLS message $GRPC_MSG_BYTES B"
    has_suite tcp && echo "redis: $(redis-server --version 2>/dev/null | awk '{print $3}')  tcp: requests $REDIS_REQUESTS clients $REDIS_CLIENTS tests $REDIS_TESTS"
    return 0
}

# ---------------------------------------------------------------------------------------------
# Load generators: run_load_<tool> OUT ARGS... and parse_load_<tool> OUT (see parse_load_oha)
# ---------------------------------------------------------------------------------------------

LOAD_PATH=/ # the URL path h2load requests

# h2load against the current target, one thread, on the load core; the :authority names the
# service in the mesh-proxy's static file (the other targets ignore it). Per-request log in
# OUT.log (start, status, µs), the summary on OUT.
run_load_h2load() {
    local out=$1
    shift
    taskset -c "$LOAD_CORE" h2load -t 1 --log-file="$out.log" -H ":authority: $HOST_HEADER" "$@" \
        "http://127.0.0.1:$TARGET_PORT$LOAD_PATH" >"$out" 2>"$out.stderr"
}

# A warm-up run (connection pools, caches): must succeed without errors; its log is dropped.
h2load_warmup() {
    local out=$1
    run_load_h2load "$@" || die "warm-up against $TARGET_LABEL failed (see $out)"
    rm -f "$out.log"
    parse_load_h2load "$out" >/dev/null 2>&1 || true
    ((L_ERRORS == 0)) || log "  warning: $L_ERRORS failed requests during the warm-up against $TARGET_LABEL (see $out)"
}

parse_load_h2load() {
    local out=$1 line
    # "finished in 1.23s, 81234.56 req/s, ..." (the unit may be s, ms or us)
    line=$(grep -m1 '^finished in' "$out") || return 1
    L_TOTAL=$(awk '{ v = $3; sub(/,$/, "", v); f = 1
        if (v ~ /ms$/) f = 1e-3; else if (v ~ /us$/) f = 1e-6
        sub(/[a-z]+$/, "", v); printf "%.6f", v * f }' <<<"$line")
    # "requests: N total, N started, D done, S succeeded, F failed, E errored, T timeout"
    read -r L_RESPONSES < <(awk '/^requests:/ { print $6 }' "$out")
    # "status codes: A 2xx, B 3xx, C 4xx, D 5xx"
    read -r L_OK < <(awk '/^status codes:/ { print $3 }' "$out")
    local total
    total=$(awk '/^requests:/ { print $2 }' "$out")
    [[ -n $L_RESPONSES && -n $L_OK && -n $total ]] || return 1
    L_ERRORS=$((total - L_OK)) # failed, errored, timed out or not 2xx
    # Percentiles of the successful requests, from the per-request log (3rd column: µs).
    read -r L_P50 L_P99 L_P999 L_MEAN < <(awk -F'\t' '$2 >= 200 && $2 < 300 { print $3 }' "$out.log" 2>/dev/null | sort -n |
        awk '{ v[NR] = $1; s += $1 }
            function p(q,  i) { i = int(q * NR); if (i >= NR) i = NR - 1; return v[i + 1] / 1e6 }
            END { if (NR == 0) { print "nan nan nan nan"; exit }
                  printf "%.6f %.6f %.6f %.6f\n", p(0.5), p(0.99), p(0.999), s / NR / 1e6 }')
    [[ ! -f $out.log ]] || gzip -f "$out.log" # raw per-request data, kept with the results
}

# redis-benchmark against the current target (or TCP_HOST:TCP_PORT inside TCP_NS), on the load
# core. ARGS: the redis-benchmark test and any extra flags.
TCP_HOST=""
TCP_PORT=""
TCP_NS_PREFIX=()
run_load_redis() {
    local out=$1
    shift
    "${TCP_NS_PREFIX[@]}" taskset -c "$LOAD_CORE" redis-benchmark -h "${TCP_HOST:-127.0.0.1}" \
        -p "${TCP_PORT:-$TARGET_PORT}" -c "$REDIS_CLIENTS" -n "$REDIS_REQUESTS" --csv "$@" \
        >"$out" 2>"$out.stderr"
}

# --csv: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",
# "p99_latency_ms","max_latency_ms" (redis 7; no p99.9). redis-benchmark counts no errors: an
# error reply still counts as an answer, so the warm-up checks the answers once (probe_tcp).
parse_load_redis() {
    local out=$1
    read -r L_TOTAL L_P50 L_P99 L_MEAN < <(awk -F'"' -v n="$REDIS_REQUESTS" 'NR == 2 && $4 > 0 {
        printf "%.6f %.6f %.6f %.6f\n", n / $4, $10 / 1e3, $14 / 1e3, $6 / 1e3 }' "$out")
    [[ -n $L_TOTAL ]] || return 1
    L_RESPONSES=$REDIS_REQUESTS L_OK=$REDIS_REQUESTS L_ERRORS=0 L_P999=nan
    if grep -qi 'error' "$out.stderr" "$out"; then L_ERRORS=1; fi
}

# grpc_unary.py client: sequential unary calls over one grpcio channel, on the load core.
run_load_grpcpy() {
    local out=$1
    shift
    taskset -c "$LOAD_CORE" "$PYTHON" "$BENCH_DIR/grpc_unary.py" client --target "127.0.0.1:$TARGET_PORT" \
        --authority "$HOST_HEADER" --size "$GRPC_MSG_BYTES" "$@" >"$out" 2>"$out.stderr"
}

parse_load_grpcpy() {
    read -r L_RESPONSES L_OK L_ERRORS L_TOTAL L_P50 L_P99 L_P999 L_MEAN < <(jq -r '[.count, .ok, .errors,
        .total, (.p50 // "nan"), (.p99 // "nan"), (.p999 // "nan"), (.mean // "nan")] | @tsv' "$1") || return 1
    local why
    why=$(jq -r '.first_error // empty' "$1")
    [[ -z $why ]] || log "  grpcio client: $L_ERRORS failed calls, the first: $why"
}

# ---------------------------------------------------------------------------------------------
# Probes: is the current target up and answering correctly? (target_ready in run.sh)
# ---------------------------------------------------------------------------------------------

probe_h2() {
    [[ $(curl -s -o /dev/null -m 2 -w '%{http_code}' --http2-prior-knowledge -H "Host: $HOST_HEADER" \
        "http://127.0.0.1:$1/ok") == 200 ]]
}

# A unary call with curl: HTTP 200 and grpc-status 0 in the trailers.
probe_grpc() {
    curl -s -o /dev/null -D - -m 2 --http2-prior-knowledge -H "Host: $HOST_HEADER" \
        -H 'content-type: application/grpc' -H 'te: trailers' --data-binary "@$GRPC_BODY" \
        "http://127.0.0.1:$1/mesh.echo.v1.Echo/Echo" 2>/dev/null | tr -d '\r' |
        awk '/^HTTP\/2 200/ { ok = 1 } /^grpc-status: 0$/ { st = 1 } END { exit !(ok && st) }'
}

# SET then GET of one key through the target.
probe_tcp() {
    local cli=("${TCP_NS_PREFIX[@]}" redis-cli -h "${TCP_HOST:-127.0.0.1}" -p "${TCP_PORT:-$1}")
    [[ $("${cli[@]}" set meshbench probe 2>/dev/null) == OK && $("${cli[@]}" get meshbench 2>/dev/null) == probe ]]
}

# ---------------------------------------------------------------------------------------------
# The suites
# ---------------------------------------------------------------------------------------------

SUITE_TARGETS="direct mesh-1hop mesh-2hop haproxy"

run_other_suites() {
    has_suite h2 && run_h2_suite
    has_suite grpc && run_grpc_suite
    has_suite tcp && run_tcp_suite
    use_http1_suite
}

# Start an upstream process on the load core: $1 name, rest = command. Sets REPLY to its pid.
start_suite_upstream() {
    local name=$1 logf=$WORK_DIR/$1.log
    shift
    taskset -c "$LOAD_CORE" "$@" >"$logf" 2>&1 &
    REPLY=$!
    STARTED_PIDS+=("$REPLY")
}

# Start target $1 for the current suite and record its label; fails (after saying why) when
# the target cannot run here.
suite_start_target() {
    local target=$1
    log "=== $SUITE: $target ==="
    "start_$target" || return 1
    TARGET_RSS_IDLE=0
    if ((${#TARGET_PIDS[@]} > 0)); then
        rss_kib "${TARGET_PIDS[@]}"
        TARGET_RSS_IDLE=$REPLY
        log "  $TARGET_LABEL: pids ${TARGET_PIDS[*]}, idle RSS $((TARGET_RSS_IDLE / 1024)) MiB"
    fi
    echo "$target	$TARGET_LABEL	$SUITE" >>"$RUN_DIR/labels.tsv"
}

# ---- h2 ---------------------------------------------------------------------------------------

run_h2_suite() {
    local www=$WORK_DIR/nghttpd-www
    mkdir -p "$www"
    head -c "$H2_BODY_BYTES" /dev/zero | tr '\0' x >"$www/ok"
    # nghttpd: one worker, h2c with prior knowledge; max concurrent streams 100 (default) is
    # more than h2load's -m.
    start_suite_upstream nghttpd nghttpd --no-tls -a 127.0.0.1 -n 1 -d "$www" "$NGHTTPD_PORT"
    local up=$REPLY
    SUITE=h2 UPSTREAM_PIDS=("$up") UP_PORT=$NGHTTPD_PORT HAPROXY_MODE=h2 LOAD_TOOL=h2load LOAD_PATH=/ok
    MESH_ROUTES=("$HOST_HEADER 127.0.0.1:$NGHTTPD_PORT")
    wait_until "$up" "$WORK_DIR/nghttpd.log" probe_h2 "$NGHTTPD_PORT" || die "nghttpd did not start"
    log "h2 upstream nghttpd on 127.0.0.1:$NGHTTPD_PORT (pid $up, core $LOAD_CORE)"
    local target rate suffix
    for target in $SUITE_TARGETS; do
        has_target "$target" || continue
        suite_start_target "$target" || continue
        h2load_warmup "$RUN_DIR/h2-$target-warmup.txt" -n "$((H2_REQUESTS / 4))" -c "$H2_CLIENTS" -m "$H2_STREAMS"
        for ((REPEAT_INDEX = 1; REPEAT_INDEX <= REPEAT; REPEAT_INDEX++)); do
            suffix=""
            ((REPEAT == 1)) || suffix="-$REPEAT_INDEX"
            measure_quietly "$target" max "" "$RUN_DIR/h2-$target-max$suffix.txt" \
                -n "$H2_REQUESTS" -c "$H2_CLIENTS" -m "$H2_STREAMS"
            for rate in $H2_RATES; do
                # --rps is per connection: RATE in total over H2_RATE_CLIENTS connections.
                measure_quietly "$target" rate "$rate" "$RUN_DIR/h2-$target-rate$rate$suffix.txt" \
                    -n "$((rate * DURATION_S))" -c "$H2_RATE_CLIENTS" -m "$H2_STREAMS" \
                    --rps "$((rate / H2_RATE_CLIENTS))"
            done
        done
        stop_target
    done
    stop_pids "$up"
}

# ---- grpc -------------------------------------------------------------------------------------

GRPC_BODY=""

run_grpc_suite() {
    GRPC_BODY=$WORK_DIR/grpc-request.bin
    local plain_body=$WORK_DIR/h2-post-body.bin
    "$PYTHON" "$BENCH_DIR/grpc_unary.py" body --size "$GRPC_MSG_BYTES" --grpc >"$GRPC_BODY"
    cp "$GRPC_BODY" "$plain_body" # the same bytes as a plain POST (no gRPC content-type)
    local grpc_args=(-d "$GRPC_BODY" -H 'content-type: application/grpc' -H 'te: trailers')
    SUITE=grpc HAPROXY_MODE=h2

    # 1. mesh-echo (the http1 suite's upstream; it speaks h2c and gRPC on the same port).
    # 2. a grpcio server: the client and server of the reported defect.
    start_suite_upstream grpcio-server "$PYTHON" "$BENCH_DIR/grpc_unary.py" serve --port "$GRPCIO_PORT"
    local py=$REPLY
    wait_until "$py" "$WORK_DIR/grpcio-server.log" probe_grpc "$GRPCIO_PORT" || die "the grpcio server did not start"
    log "grpc upstreams: mesh-echo on :$UPSTREAM_PORT, grpcio on :$GRPCIO_PORT (pid $py, core $LOAD_CORE)"

    local server target suffix warm=$((GRPC_CALLS / 10 > 200 ? GRPC_CALLS / 10 : 200))
    for server in echo grpcio; do
        if [[ $server == echo ]]; then
            UPSTREAM_PIDS=("$UPSTREAM_PID") UP_PORT=$UPSTREAM_PORT
        else
            UPSTREAM_PIDS=("$py") UP_PORT=$GRPCIO_PORT
        fi
        MESH_ROUTES=("$HOST_HEADER 127.0.0.1:$UP_PORT")
        for target in $SUITE_TARGETS; do
            has_target "$target" || continue
            suite_start_target "$target" || continue
            log "  server: $server (127.0.0.1:$UP_PORT)"
            LOAD_TOOL=h2load LOAD_PATH=/mesh.echo.v1.Echo/Echo
            h2load_warmup "$RUN_DIR/grpc-$server-$target-warmup.txt" -n "$warm" -c 1 -m 1 "${grpc_args[@]}"
            for ((REPEAT_INDEX = 1; REPEAT_INDEX <= REPEAT; REPEAT_INDEX++)); do
                suffix=""
                ((REPEAT == 1)) || suffix="-$REPEAT_INDEX"
                if [[ $server == echo ]]; then
                    LOAD_TOOL=h2load LOAD_PATH=/
                    measure_quietly "$target" "$server:h2-get" "" "$RUN_DIR/grpc-$server-$target-h2-get$suffix.txt" \
                        -n "$GRPC_CALLS" -c 1 -m 1
                    measure_quietly "$target" "$server:h2-post" "" "$RUN_DIR/grpc-$server-$target-h2-post$suffix.txt" \
                        -n "$GRPC_CALLS" -c 1 -m 1 -d "$plain_body"
                fi
                LOAD_TOOL=h2load LOAD_PATH=/mesh.echo.v1.Echo/Echo
                measure_quietly "$target" "$server:grpc-h2load" "" "$RUN_DIR/grpc-$server-$target-grpc-h2load$suffix.txt" \
                    -n "$GRPC_CALLS" -c 1 -m 1 "${grpc_args[@]}"
                LOAD_TOOL=grpcpy
                measure_quietly "$target" "$server:grpc-py" "" "$RUN_DIR/grpc-$server-$target-grpc-py$suffix.json" \
                    --calls "$GRPC_CALLS" --warmup 100
            done
            stop_target
        done
    done
    stop_pids "$py"
}

# ---- tcp --------------------------------------------------------------------------------------

# redis-server on 127.0.0.1, no persistence, in the foreground (add --port).
REDIS_ARGS=(--bind 127.0.0.1 --save "" --appendonly no --protected-mode no --daemonize no --loglevel warning)

run_tcp_suite() {
    start_suite_upstream redis redis-server --port "$REDIS_PORT" "${REDIS_ARGS[@]}"
    local up=$REPLY
    TCP_UPSTREAM_PID=$up
    SUITE=tcp UPSTREAM_PIDS=("$up") UP_PORT=$REDIS_PORT HAPROXY_MODE=tcp LOAD_TOOL=redis
    MESH_ROUTES=()
    TCP_HOST="" TCP_PORT="" TCP_NS_PREFIX=()
    wait_until "$up" "$WORK_DIR/redis.log" probe_tcp "$REDIS_PORT" || die "redis-server did not start"
    log "tcp upstream redis-server on 127.0.0.1:$REDIS_PORT (pid $up, core $LOAD_CORE)"
    local target test suffix
    for target in $SUITE_TARGETS; do
        has_target "$target" || continue
        suite_start_target "$target" || continue
        run_load_redis "$RUN_DIR/tcp-$target-warmup.csv" -t set,get -n "$((REDIS_REQUESTS / 4))" ||
            die "warm-up against $target failed"
        for ((REPEAT_INDEX = 1; REPEAT_INDEX <= REPEAT; REPEAT_INDEX++)); do
            suffix=""
            ((REPEAT == 1)) || suffix="-$REPEAT_INDEX"
            for test in $REDIS_TESTS; do
                measure_quietly "$target" "$test" "" "$RUN_DIR/tcp-$target-$test$suffix.csv" -t "$test"
            done
        done
        stop_target
    done
    stop_pids "$up"
    UPSTREAM_PIDS=()
}

# Two hops of opaque TCP need transparent mode. In a network namespace of our own:
#   redis-benchmark -> 10.201.0.2:6379 (a "Service" address, routed out of a veth that leads
#   nowhere) -> iptables REDIRECT (mesh-proxy init) -> client sidecar's outbound listener
#   (UID 2102, so its own connections are not redirected) -> static file: 10.201.0.2:6379 has
#   the endpoint 127.0.0.1:REDIS_PORT with hint meshed_h2 / inbound_port -> the server
#   sidecar's inbound listener -> redis-server, also in the namespace.
start_tcp_mesh-2hop() {
    if [[ $(id -u) -ne 0 ]]; then
        log "  skipping tcp mesh-2hop: transparent mode needs root (a network namespace and iptables)"
        return 1
    fi
    command -v iptables >/dev/null || {
        log "  skipping tcp mesh-2hop: iptables is missing (apt-get install iptables)"
        return 1
    }
    NETNS=meshbench-$MAIN_PID
    ip netns add "$NETNS" || die "ip netns add $NETNS failed"
    local ns=(ip netns exec "$NETNS")
    ip -n "$NETNS" link set lo up
    # A link with an address for the Service's network; nothing answers on it (a veth pair
    # inside the namespace: the dummy driver may be missing in containers).
    ip -n "$NETNS" link add mb0 type veth peer name mb1 || die "cannot create a veth pair in $NETNS"
    ip -n "$NETNS" addr add 10.201.0.1/24 dev mb0
    ip -n "$NETNS" link set mb0 up
    ip -n "$NETNS" link set mb1 up

    # The proxies run as UID 2102: the static files must be readable for it.
    local dir=$WORK_DIR/netns
    mkdir -p "$dir"
    chmod 755 "$WORK_DIR" "$dir"
    printf 'services: []\n' >"$dir/server.yaml"
    cat >"$dir/client.yaml" <<EOF
# two hops, transparent: the original destination names the service
services:
  - authority: "$NETNS_SERVICE_IP:$NETNS_SERVICE_PORT"
    endpoints:
      - addr: "127.0.0.1:$REDIS_PORT"
        hint: { kind: meshed_h2, inbound_port: $MESH2S_IN }
EOF
    chmod 644 "$dir"/*.yaml
    "${ns[@]}" "$PROXY_BIN" init --proxy-uid 2102 --outbound-port "$MESH2C_OUT" \
        --inbound-port "$MESH2C_IN" --admin-port "$MESH2C_ADMIN" >"$WORK_DIR/netns-init.log" 2>&1 || {
        cat "$WORK_DIR/netns-init.log" >&2
        die "mesh-proxy init failed in $NETNS"
    }
    "${ns[@]}" iptables -t nat -S >>"$WORK_DIR/netns-init.log" 2>&1 || true

    # redis inside the namespace (its own 127.0.0.1:REDIS_PORT).
    start_suite_upstream redis-netns "${ns[@]}" redis-server --port "$REDIS_PORT" "${REDIS_ARGS[@]}"
    NETNS_REDIS_PID=$REPLY
    UPSTREAM_PIDS=("$NETNS_REDIS_PID")
    TCP_NS_PREFIX=("${ns[@]}")
    TCP_HOST=127.0.0.1 TCP_PORT=$REDIS_PORT
    wait_until "$NETNS_REDIS_PID" "$WORK_DIR/redis-netns.log" probe_tcp || die "redis-server in $NETNS did not start"

    MESH_PROXY_WRAP=("${ns[@]}" setpriv --reuid 2102 --regid 2102 --clear-groups)
    MESH_PROXY_NS_ARGS=${#ns[@]}
    start_mesh_proxy mesh-2hop-server "$MESH2S_OUT" "$MESH2S_IN" "$MESH2S_ADMIN" "$dir/server.yaml"
    local server_pid=$REPLY
    start_mesh_proxy mesh-2hop-client "$MESH2C_OUT" "$MESH2C_IN" "$MESH2C_ADMIN" "$dir/client.yaml"
    MESH_PROXY_WRAP=() MESH_PROXY_NS_ARGS=0
    TARGET_PIDS=("$REPLY" "$server_pid")
    TARGET_PORT=$NETNS_SERVICE_PORT
    TARGET_LABEL="mesh-proxy, 2 hops (transparent, both proxies)"
    TCP_HOST=$NETNS_SERVICE_IP TCP_PORT=$NETNS_SERVICE_PORT
    target_ready "$TARGET_PORT" "$REPLY" "$WORK_DIR/mesh-2hop-client.log" ||
        die "the two-hop transparent path ($NETNS_SERVICE_IP:$NETNS_SERVICE_PORT in $NETNS) does not reach redis"
}

stop_tcp_target() {
    if [[ -n $NETNS ]]; then
        stop_pids "$NETNS_REDIS_PID"
        suites_cleanup
        UPSTREAM_PIDS=("${TCP_UPSTREAM_PID:-}")
    fi
    TCP_HOST="" TCP_PORT="" TCP_NS_PREFIX=()
}

# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

suites_report() {
    local s
    for s in h2 grpc tcp; do
        has_suite "$s" || continue
        awk -F'\t' -v suite="$s" -v conc="$H2_CLIENTS" -v streams="$H2_STREAMS" -v rates="$H2_RATES" \
            -v rate_clients="$H2_RATE_CLIENTS" -v calls="$GRPC_CALLS" -v msg="$GRPC_MSG_BYTES" \
            -v redis_clients="$REDIS_CLIENTS" -v redis_n="$REDIS_REQUESTS" -v tests="$REDIS_TESTS" \
            -v h2_n="$H2_REQUESTS" -f "$BENCH_DIR/report-suites.awk" "$RUN_DIR/labels.tsv" "$MEASUREMENTS"
    done
}
