#!/usr/bin/env bash
# The local demo: one client-side mesh-proxy (static config, no controller yet) in front of
# four sample replicas, each behind its own server-side mesh-proxy. A client sends steady
# traffic; the screen shows live golden metrics: traffic split 90/10 between v1 and v2,
# load balancing that starves the slow replica, retries that hide the flaky one.
#
#   scripts/demo.sh              run until Ctrl-C (everything is torn down on exit)
#   DEMO_SECONDS=10 scripts/demo.sh   run for 10 s, print the final figures, exit
#
# Only 127.0.0.1 is used. Ports: client proxy 14140 (outbound) / 14191 (admin); replicas
# 18081-18084 behind proxies on 14181-14184 (inbound) and 16181-16184 (admin).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${DEMO_SECONDS:-0}
rate=${DEMO_RATE:-100}
log_dir=$(mktemp -d -t mesh-demo.XXXXXX)
pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$log_dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "building mesh-proxy and the sample app (first build takes a few minutes)..."
cargo build -q -p mesh-proxy -p mesh-e2e
bin=target/debug
fetch() { "$bin/mesh-echo" fetch "$1" 2>/dev/null || true; }

start() { # name, log, command...
  local name=$1; shift
  "$@" >"$log_dir/$name.log" 2>&1 &
  pids+=($!)
}

# Four replicas: v1 fast, v1 slow (30 ms), v1 flaky (20% 503), v2.
start app-1 "$bin/mesh-echo" serve --listen 127.0.0.1:18081 --name v1-fast
start app-2 "$bin/mesh-echo" serve --listen 127.0.0.1:18082 --name v1-slow --delay-ms 30
start app-3 "$bin/mesh-echo" serve --listen 127.0.0.1:18083 --name v1-flaky --fail-rate 0.2
start app-4 "$bin/mesh-echo" serve --listen 127.0.0.1:18084 --name v2

for i in 1 2 3 4; do
  start "proxy-$i" env MESH_PROXY_LOG=warn \
    MESH_PROXY_INBOUND_ADDR=127.0.0.1:1418$i MESH_PROXY_INBOUND_FORWARD=127.0.0.1:1808$i \
    MESH_PROXY_OUTBOUND_ADDR=127.0.0.1:1518$i MESH_PROXY_ADMIN_ADDR=127.0.0.1:1618$i \
    "$bin/mesh-proxy"
done
start client-proxy env MESH_PROXY_LOG=warn MESH_PROXY_STATIC_CONFIG=examples/standalone/mesh.yaml \
  MESH_PROXY_OUTBOUND_ADDR=127.0.0.1:14140 MESH_PROXY_INBOUND_ADDR=127.0.0.1:14143 \
  MESH_PROXY_ADMIN_ADDR=127.0.0.1:14191 "$bin/mesh-proxy"

for admin in 14191 16181 16182 16183 16184; do
  for _ in $(seq 100); do
    [ "$(fetch "http://127.0.0.1:$admin/ready")" = "ready" ] && break
    sleep 0.1
  done
  if [ "$(fetch "http://127.0.0.1:$admin/ready")" != "ready" ]; then
    echo "a proxy did not become ready; logs:" >&2
    tail -n 20 "$log_dir"/*.log >&2
    exit 1
  fi
done

# Steady traffic from the "app": plain HTTP/1 to the local proxy, Host names the service.
start client "$bin/mesh-echo" load http://web.demo:8080/ --via 127.0.0.1:14140 --requests 100000000 --rate "$rate"

# Sum of the values of metric lines matching a regex.
sum() { awk -v re="$2" '$0 ~ re && $0 !~ /^#/ { s += $NF } END { printf "%d", s }' <<<"$1"; }

show() {
  local m; m=$(fetch http://127.0.0.1:14191/metrics)
  local ok fail retries exhausted lat_sum lat_count
  ok=$(sum "$m" '^mesh_proxy_requests_total\{direction="outbound",authority="web.demo:8080".*classification="success"')
  fail=$(sum "$m" '^mesh_proxy_requests_total\{direction="outbound",authority="web.demo:8080".*classification="failure"')
  retries=$(sum "$m" '^mesh_proxy_retries_total')
  exhausted=$(sum "$m" '^mesh_proxy_retry_budget_exhausted_total')
  lat_sum=$(awk '/^mesh_proxy_response_latency_seconds_sum\{direction="outbound",authority="web.demo:8080"/ {print $NF}' <<<"$m")
  lat_count=$(awk '/^mesh_proxy_response_latency_seconds_count\{direction="outbound",authority="web.demo:8080"/ {print $NF}' <<<"$m")
  printf 'mesh demo (standalone proxies, static config)   %s\n\n' "$(date +%T)"
  printf 'client -> web.demo:8080 via the client proxy at 127.0.0.1:14140 (%s rps)\n' "$rate"
  printf '  requests ok       %8d\n  requests failed   %8d\n' "$ok" "$fail"
  printf '  retries           %8d   (budget exhausted: %d)\n' "$retries" "$exhausted"
  awk -v s="${lat_sum:-0}" -v c="${lat_count:-0}" 'BEGIN { if (c > 0) printf "  mean latency      %8.2f ms\n", 1000 * s / c }'
  printf '\nreplicas (requests counted by each replica'"'"'s own inbound proxy; HTTP/2 between proxies)\n'
  local i name
  for i in 1 2 3 4; do
    case $i in 1) name="v1-fast";; 2) name="v1-slow (30 ms)";; 3) name="v1-flaky (20% 503)";; 4) name="v2";; esac
    local pm; pm=$(fetch "http://127.0.0.1:1618$i/metrics")
    printf '  %-20s %8d ok %6d failed\n' "$name" \
      "$(sum "$pm" '^mesh_proxy_requests_total\{direction="inbound".*classification="success"')" \
      "$(sum "$pm" '^mesh_proxy_requests_total\{direction="inbound".*classification="failure"')"
  done
  printf '\nsplit 90/10 v1/v2 and retry policy: examples/standalone/mesh.yaml (edit it live)\n'
  printf 'admin: http://127.0.0.1:14191/metrics  /config  /ready   mTLS: comes with the identity issue\n'
}

start_time=$SECONDS
while :; do
  if [ "$seconds" -gt 0 ]; then
    sleep 1
    if (( SECONDS - start_time >= seconds )); then show; break; fi
  else
    out=$(show); printf '\033[H\033[2J%s\n\n(Ctrl-C to stop)\n' "$out"; sleep 2
  fi
done
