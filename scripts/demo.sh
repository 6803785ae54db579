#!/usr/bin/env bash
# The local mesh: mesh-controller in local mode (reading examples/local/*.yaml), five sample
# replicas each behind its own mesh-proxy, and a client behind its proxy sending steady
# traffic. The screen shows live golden metrics: the 90/10 split of an HTTPRoute, peak-EWMA
# load balancing that starves the slow replica, retries that hide the flaky one, and
# discovery: a fifth replica registers by file halfway through and starts taking traffic.
#
#   scripts/demo.sh                    run until Ctrl-C (everything is torn down on exit)
#   DEMO_SECONDS=10 scripts/demo.sh    run for 10 s, print the final figures, exit
#
# Only 127.0.0.1 is used. Ports: controller 18086 (gRPC) / 19990 (admin); client proxy
# 14140 (outbound) / 14191 (admin); replicas 18081-18085 behind proxies on 14181-14185
# (inbound) and 16181-16185 (admin).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${DEMO_SECONDS:-0}
rate=${DEMO_RATE:-100}
work=$(mktemp -d -t mesh-demo.XXXXXX)
config="$work/mesh.d"
pids=()

cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The same build (dev profile, target/debug) as the README's "Running the mesh"; the tests use
# the same profile.
echo "building mesh-controller, mesh-proxy, meshctl and the sample app (dev profile, target/debug);"
echo "the first build takes 10-25 minutes on 2 cores (cargo shows its progress); later runs take seconds..."
cargo build -p mesh-controller -p mesh-proxy -p mesh-e2e -p mesh-cli
bin=target/debug
fetch() { "$bin/mesh-echo" fetch "$1" 2>/dev/null || true; }

start() { # name, command...
  local name=$1; shift
  "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
}

wait_ready() { # admin port, name
  for _ in $(seq 200); do
    [ "$(fetch "http://127.0.0.1:$1/ready")" = "ready" ] && return 0
    sleep 0.1
  done
  echo "$2 did not become ready; logs:" >&2
  tail -n 20 "$work"/*.log >&2
  exit 1
}

# The controller reads a working copy of the example objects: edit it while the demo runs.
mkdir -p "$config"
cp examples/local/*.yaml "$config/"
start controller env MESH_CONTROLLER_LOG=warn "$bin/mesh-controller" --source local \
  --config-dir "$config" --grpc-addr 127.0.0.1:18086 --admin-addr 127.0.0.1:19990
wait_ready 19990 "mesh-controller"

# Five replicas: v1 fast, v1 slow (30 ms), v1 flaky (20% 503), v2, and a v1 that registers
# later. Each has its own proxy; inbound requests are forwarded to the replica on localhost.
names=(v1-fast "v1-slow (30 ms)" "v1-flaky (20% 503)" v2 "v1-new (joins later)")
start app-1 "$bin/mesh-echo" serve --listen 127.0.0.1:18081 --name v1-fast
start app-2 "$bin/mesh-echo" serve --listen 127.0.0.1:18082 --name v1-slow --delay-ms 30
start app-3 "$bin/mesh-echo" serve --listen 127.0.0.1:18083 --name v1-flaky --fail-rate 0.2
start app-4 "$bin/mesh-echo" serve --listen 127.0.0.1:18084 --name v2
start app-5 "$bin/mesh-echo" serve --listen 127.0.0.1:18085 --name v1-new
for i in 1 2 3 4 5; do
  start "proxy-$i" env MESH_PROXY_LOG=warn \
    MESH_PROXY_CONTROLLER_ADDR=http://127.0.0.1:18086 MESH_PROXY_WORKLOAD="ns:demo/workload:web-$i" \
    MESH_PROXY_INBOUND_ADDR=127.0.0.1:1418$i MESH_PROXY_INBOUND_FORWARD=127.0.0.1:1808$i \
    MESH_PROXY_OUTBOUND_ADDR=127.0.0.1:1518$i MESH_PROXY_ADMIN_ADDR=127.0.0.1:1618$i \
    "$bin/mesh-proxy"
done
start client-proxy env MESH_PROXY_LOG=warn \
  MESH_PROXY_CONTROLLER_ADDR=http://127.0.0.1:18086 MESH_PROXY_WORKLOAD=ns:demo/workload:client \
  MESH_PROXY_OUTBOUND_ADDR=127.0.0.1:14140 MESH_PROXY_INBOUND_ADDR=127.0.0.1:14143 \
  MESH_PROXY_ADMIN_ADDR=127.0.0.1:14191 "$bin/mesh-proxy"
for port in 14191 16181 16182 16183 16184 16185; do wait_ready "$port" "the proxy with admin port $port"; done

# Steady traffic from the "app": plain HTTP/1 to its local proxy, the Host names the service.
start client "$bin/mesh-echo" load http://web.demo:8080/ --via 127.0.0.1:14140 --requests 100000000 --rate "$rate"

# Sum of the values of metric lines matching a regex.
sum() { awk -v re="$2" '$0 ~ re && $0 !~ /^#/ { s += $NF } END { printf "%d", s }' <<<"$1"; }

joined=""
register_new_replica() {
  cat >"$config/.web-5.tmp" <<'YAML'
apiVersion: mesh.dev/v1alpha1
kind: Workload
metadata: {name: web-5, namespace: demo, labels: {app: web, version: v1}}
spec: {address: 127.0.0.1, ports: [{name: http, port: 18085}], serviceAccount: web, proxy: {inboundPort: 14185}}
YAML
  mv "$config/.web-5.tmp" "$config/web-5.yaml"
  joined=$(date +%T)
}

show() {
  local m; m=$(fetch http://127.0.0.1:14191/metrics)
  local cm; cm=$(fetch http://127.0.0.1:19990/metrics)
  local ok fail retries exhausted lat_sum lat_count
  ok=$(sum "$m" '^mesh_proxy_requests_total[{]direction="outbound",authority="web.demo:8080".*classification="success"')
  fail=$(sum "$m" '^mesh_proxy_requests_total[{]direction="outbound",authority="web.demo:8080".*classification="failure"')
  retries=$(sum "$m" '^mesh_proxy_retries_total')
  exhausted=$(sum "$m" '^mesh_proxy_retry_budget_exhausted_total')
  lat_sum=$(awk '/^mesh_proxy_response_latency_seconds_sum[{]direction="outbound",authority="web.demo:8080"/ {print $NF}' <<<"$m")
  lat_count=$(awk '/^mesh_proxy_response_latency_seconds_count[{]direction="outbound",authority="web.demo:8080"/ {print $NF}' <<<"$m")
  printf 'mesh demo: local mode (mesh-controller + 6 mesh-proxies)   %s\n\n' "$(date +%T)"
  printf 'controller  %d services, %d endpoints, %d proxy streams open, %d updates sent\n\n' \
    "$(sum "$cm" '^mesh_controller_index_objects[{]kind="Service"')" \
    "$(sum "$cm" '^mesh_controller_index_endpoints ')" \
    "$(sum "$cm" '^mesh_controller_streams_open')" \
    "$(sum "$cm" '^mesh_controller_updates_sent_total')"
  printf 'client -> web.demo:8080 via its proxy at 127.0.0.1:14140 (%s rps)\n' "$rate"
  printf '  requests ok       %8d\n  requests failed   %8d\n' "$ok" "$fail"
  printf '  retries           %8d   (budget exhausted: %d)\n' "$retries" "$exhausted"
  awk -v s="${lat_sum:-0}" -v c="${lat_count:-0}" 'BEGIN { if (c > 0) printf "  mean latency      %8.2f ms\n", 1000 * s / c }'
  printf '\nreplicas (requests counted by each replica'"'"'s own inbound proxy; HTTP/2 between proxies)\n'
  local i
  for i in 1 2 3 4 5; do
    local pm; pm=$(fetch "http://127.0.0.1:1618$i/metrics")
    printf '  %-22s %8d ok %6d failed\n' "${names[$((i - 1))]}" \
      "$(sum "$pm" '^mesh_proxy_requests_total[{]direction="inbound".*classification="success"')" \
      "$(sum "$pm" '^mesh_proxy_requests_total[{]direction="inbound".*classification="failure"')"
  done
  if [ -n "$joined" ]; then printf '  (web-5 registered at %s by writing %s)\n' "$joined" "$config/web-5.yaml"; fi
  printf '\nconfig: %s (HTTPRoute 90/10 in route.yaml: edit it live)\n' "$config"
  printf 'admin: controller http://127.0.0.1:19990/status  client proxy http://127.0.0.1:14191/metrics\n'
  printf 'mTLS: not supported yet; traffic between proxies is plaintext HTTP/2\n'
}

# The new replica registers halfway (or after 20 s when running until Ctrl-C).
join_at=$(( seconds > 0 ? seconds / 2 : 20 ))
start_time=$SECONDS
while :; do
  if [ -z "$joined" ] && (( SECONDS - start_time >= join_at )); then register_new_replica; fi
  if [ "$seconds" -gt 0 ]; then
    sleep 1
    if (( SECONDS - start_time >= seconds )); then sleep 1; show; break; fi
  else
    out=$(show); printf '\033[H\033[2J%s\n\n(Ctrl-C to stop)\n' "$out"; sleep 2
  fi
done
