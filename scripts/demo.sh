#!/usr/bin/env bash
# The local mesh: mesh-controller in local mode (reading examples/local/*.yaml) with its
# certificate authority, five sample replicas each behind its own mesh-proxy, a client behind
# its proxy sending steady traffic, and an "intruder" behind a proxy of its own. Every proxy
# has a workload identity (a certificate from the controller, obtained with a join token), so
# all traffic between proxies is mutual TLS. The screen shows live golden metrics: the 90/10
# split of an HTTPRoute, peak-EWMA load balancing that starves the slow replica, retries that
# hide the flaky one, discovery (a fifth replica registers by file halfway through and starts
# taking traffic), each replica's identity, the share of requests that arrived over mTLS, and
# the intruder's calls that the AuthorizationPolicy denies (403).
#
#   scripts/demo.sh                    run until Ctrl-C (everything is torn down on exit)
#   DEMO_SECONDS=10 scripts/demo.sh    run for 10 s, print the final figures, exit
#   DEMO_RATE (100) and DEMO_INTRUDER_RATE (5): requests per second of the client and the
#   intruder; DEMO_LEAF_LIFETIME (1m): lifetime of the proxies' certificates.
#
# Only 127.0.0.1 is used. Ports: controller 18086 (gRPC) / 19990 (admin); client proxy
# 14140 (outbound) / 14191 (admin); intruder proxy 14150 (outbound) / 14190 (admin); replicas
# 18081-18085 behind proxies on 14181-14185 (inbound) and 16181-16185 (admin).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${DEMO_SECONDS:-0}
rate=${DEMO_RATE:-100}
intruder_rate=${DEMO_INTRUDER_RATE:-5}
leaf_lifetime=${DEMO_LEAF_LIFETIME:-1m}
work=$(mktemp -d -t mesh-demo.XXXXXX)
config="$work/mesh.d"
ident="$work/identity"
td=cluster.local
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
bin=${CARGO_TARGET_DIR:-target}/debug
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

# The certificate authority (a trust anchor and an issuer) and one join token per workload:
# a token proves one identity, spiffe://cluster.local/ns/demo/sa/<service account>, for the one
# workload it names. The controller stores only the tokens' hashes (join-tokens.yaml).
"$bin/mesh-controller" identity init --dir "$ident" --trust-domain "$td" >"$work/identity.log" 2>&1 \
  || { cat "$work/identity.log" >&2; exit 1; }
join_token() { # workload, service account
  "$bin/mesh-controller" identity join-token --dir "$ident" --namespace demo \
    --service-account "$2" --workload "ns:demo/workload:$1" >"$ident/$1.token" 2>>"$work/identity.log" \
    || { cat "$work/identity.log" >&2; exit 1; }
}
for i in 1 2 3 4 5; do join_token "web-$i" web; done
join_token client client
join_token intruder intruder

# The controller reads a working copy of the example objects: edit it while the demo runs.
mkdir -p "$config"
cp examples/local/*.yaml "$config/"
start controller env MESH_CONTROLLER_LOG=warn "$bin/mesh-controller" --source local \
  --config-dir "$config" --grpc-addr 127.0.0.1:18086 --admin-addr 127.0.0.1:19990 \
  --identity-dir "$ident" --trust-domain "$td" --identity-leaf-lifetime "$leaf_lifetime"
wait_ready 19990 "mesh-controller"

# A proxy with a workload identity: name (log), workload, service account, then VAR=value...
proxy() {
  local name=$1 workload=$2 sa=$3; shift 3
  start "$name" env MESH_PROXY_LOG=warn MESH_PROXY_CONTROLLER_ADDR=http://127.0.0.1:18086 \
    MESH_PROXY_WORKLOAD="ns:demo/workload:$workload" \
    MESH_PROXY_IDENTITY="spiffe://$td/ns/demo/sa/$sa" MESH_PROXY_IDENTITY_TOKEN_FILE="$ident/$workload.token" \
    "$@" "$bin/mesh-proxy"
}

# Five replicas: v1 fast, v1 slow (30 ms), v1 flaky (20% 503), v2, and a v1 that registers
# later. Each has its own proxy (identity: service account web); inbound requests are
# forwarded to the replica on localhost.
names=(v1-fast "v1-slow (30 ms)" "v1-flaky (20% 503)" v2 "v1-new (joins later)")
start app-1 "$bin/mesh-echo" serve --listen 127.0.0.1:18081 --name v1-fast
start app-2 "$bin/mesh-echo" serve --listen 127.0.0.1:18082 --name v1-slow --delay-ms 30
start app-3 "$bin/mesh-echo" serve --listen 127.0.0.1:18083 --name v1-flaky --fail-rate 0.2
start app-4 "$bin/mesh-echo" serve --listen 127.0.0.1:18084 --name v2
start app-5 "$bin/mesh-echo" serve --listen 127.0.0.1:18085 --name v1-new
for i in 1 2 3 4 5; do
  proxy "proxy-$i" "web-$i" web \
    MESH_PROXY_INBOUND_ADDR=127.0.0.1:1418$i MESH_PROXY_INBOUND_FORWARD=127.0.0.1:1808$i \
    MESH_PROXY_OUTBOUND_ADDR=127.0.0.1:1518$i MESH_PROXY_ADMIN_ADDR=127.0.0.1:1618$i
done
proxy client-proxy client client \
  MESH_PROXY_OUTBOUND_ADDR=127.0.0.1:14140 MESH_PROXY_INBOUND_ADDR=127.0.0.1:14143 \
  MESH_PROXY_ADMIN_ADDR=127.0.0.1:14191
proxy intruder-proxy intruder intruder \
  MESH_PROXY_OUTBOUND_ADDR=127.0.0.1:14150 MESH_PROXY_INBOUND_ADDR=127.0.0.1:14153 \
  MESH_PROXY_ADMIN_ADDR=127.0.0.1:14190
# /ready waits for discovery and for the proxy's first certificate.
for port in 14191 14190 16181 16182 16183 16184 16185; do wait_ready "$port" "the proxy with admin port $port"; done

# Steady traffic from the "app": plain HTTP/1 to its local proxy, the Host names the service.
# The intruder does the same through its own proxy; its proxy has a valid certificate too, but
# the AuthorizationPolicy in authorization.yaml admits only the client's identity.
start client "$bin/mesh-echo" load http://web.demo:8080/ --via 127.0.0.1:14140 --requests 100000000 --rate "$rate"
start intruder "$bin/mesh-echo" load http://web.demo:8080/ --via 127.0.0.1:14150 --requests 100000000 --rate "$intruder_rate"

# Sum of the values of metric lines matching a regex.
sum() { awk -v re="$2" '$0 ~ re && $0 !~ /^#/ { s += $NF } END { printf "%d", s }' <<<"$1"; }
# A share in percent ("-" when there is nothing to divide).
pct() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f%%", 100 * a / b; else printf "-" }'; }
# Time of the proxy's certificate expiry (from its metrics), or "none yet".
expiry() {
  local t; t=$(awk '/^mesh_proxy_identity_certificate_expiry_timestamp_seconds / { printf "%d", $NF }' <<<"$1")
  if [ "${t:-0}" -gt 0 ]; then date -d "@$t" +%T; else printf 'none yet'; fi
}

# The identity a replica's proxy serves with: the server_id of its inbound requests (before
# its first request, the identity its proxy was started with).
server_id() {
  local id; id=$(awk 'match($0, /^mesh_proxy_requests_total[{]direction="inbound".*server_id="[^"]+"/) {
      s = substr($0, RSTART, RLENGTH); sub(/.*server_id="/, "", s); sub(/"$/, "", s); print s; exit }' <<<"$1")
  printf '%s' "${id:-spiffe://$td/ns/demo/sa/web}"
}

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

client_id="spiffe://$td/ns/demo/sa/client"
intruder_id="spiffe://$td/ns/demo/sa/intruder"
inbound='^mesh_proxy_requests_total[{]direction="inbound"'

show() {
  local m; m=$(fetch http://127.0.0.1:14191/metrics)
  local im; im=$(fetch http://127.0.0.1:14190/metrics)
  local cm; cm=$(fetch http://127.0.0.1:19990/metrics)
  local ok fail retries exhausted lat_sum lat_count
  ok=$(sum "$m" '^mesh_proxy_requests_total[{]direction="outbound",authority="web.demo:8080".*classification="success"')
  fail=$(sum "$m" '^mesh_proxy_requests_total[{]direction="outbound",authority="web.demo:8080".*classification="failure"')
  retries=$(sum "$m" '^mesh_proxy_retries_total')
  exhausted=$(sum "$m" '^mesh_proxy_retry_budget_exhausted_total')
  lat_sum=$(awk '/^mesh_proxy_response_latency_seconds_sum[{]direction="outbound",authority="web.demo:8080"/ {print $NF}' <<<"$m")
  lat_count=$(awk '/^mesh_proxy_response_latency_seconds_count[{]direction="outbound",authority="web.demo:8080"/ {print $NF}' <<<"$m")
  printf 'mesh demo: local mode (mesh-controller + 7 mesh-proxies, mTLS between all of them)   %s\n\n' "$(date +%T)"
  printf 'controller  %d services, %d endpoints, %d proxy streams open, %d updates sent\n' \
    "$(sum "$cm" '^mesh_controller_index_objects[{]kind="Service"')" \
    "$(sum "$cm" '^mesh_controller_index_endpoints ')" \
    "$(sum "$cm" '^mesh_controller_streams_open')" \
    "$(sum "$cm" '^mesh_controller_updates_sent_total')"
  printf 'identity    CA of trust domain %s in %s: %d proxies connected, %d certificates issued\n' \
    "$td" "$ident" "$(sum "$cm" '^mesh_controller_identity_proxies[{]state="connected"')" \
    "$(sum "$cm" '^mesh_controller_certificates_issued_total')"
  printf '            (leaf certificates live %s; proxies renew them at about 70%% of that, under load)\n\n' \
    "$leaf_lifetime"

  printf 'client -> web.demo:8080 via its proxy at 127.0.0.1:14140 (%s rps)\n' "$rate"
  printf '  identity          %s (certificate until %s, %d issued)\n' "$client_id" "$(expiry "$m")" \
    "$(sum "$m" '^mesh_proxy_identity_certificate_requests_total[{]result="ok"')"
  printf '  requests ok       %8d\n  requests failed   %8d\n' "$ok" "$fail"
  printf '  retries           %8d   (budget exhausted: %d)\n' "$retries" "$exhausted"
  awk -v s="${lat_sum:-0}" -v c="${lat_count:-0}" 'BEGIN { if (c > 0) printf "  mean latency      %8.2f ms\n", 1000 * s / c }'

  printf '\nintruder -> web.demo:8080 via its proxy at 127.0.0.1:14150 (%s rps)\n' "$intruder_rate"
  printf '  identity          %s (certificate until %s)\n' "$intruder_id" "$(expiry "$im")"
  printf '  denied (403)      %8d   (allowed: %d; AuthorizationPolicy web-clients admits only %s)\n' \
    "$(sum "$im" '^mesh_proxy_requests_total[{]direction="outbound",authority="web.demo:8080".*status_code="403"')" \
    "$(sum "$im" '^mesh_proxy_requests_total[{]direction="outbound",authority="web.demo:8080".*status_code="2')" \
    "sa/client"

  printf '\nreplicas (counted by each replica'"'"'s own inbound proxy: the client'"'"'s requests, the share that\n'
  printf 'arrived over mTLS, the requests the policy denied, and the identity with its certificate'"'"'s expiry)\n'
  local i all=0 mtls=0 denied=0 conn_tls=0 conn_plain=0
  for i in 1 2 3 4 5; do
    local pm; pm=$(fetch "http://127.0.0.1:1618$i/metrics")
    local r_all r_mtls r_denied
    r_all=$(sum "$pm" "$inbound")
    r_mtls=$(sum "$pm" "$inbound"'.*client_id="spiffe://')
    r_denied=$(sum "$pm" '^mesh_proxy_authorization_denials_total[{]direction="inbound".*action="deny"')
    all=$((all + r_all)) mtls=$((mtls + r_mtls)) denied=$((denied + r_denied))
    conn_tls=$((conn_tls + $(sum "$pm" '^mesh_proxy_peer_connections_total[{]direction="inbound".*tls="true"')))
    conn_plain=$((conn_plain + $(sum "$pm" '^mesh_proxy_peer_connections_total[{]direction="inbound".*tls="false"')))
    printf '  %-22s %8d ok %6d failed %7s mTLS %6d denied   %s (%s)\n' "${names[$((i - 1))]}" \
      "$(sum "$pm" "$inbound"'.*classification="success",client_id="'"$client_id"'"')" \
      "$(sum "$pm" "$inbound"'.*classification="failure",client_id="'"$client_id"'"')" \
      "$(pct "$r_mtls" "$r_all")" "$r_denied" "$(server_id "$pm")" "$(expiry "$pm")"
  done
  if [ -n "$joined" ]; then printf '  (web-5 registered at %s by writing %s)\n' "$joined" "$config/web-5.yaml"; fi
  printf '\nmTLS share         %s of %d requests the replicas received (connections: %d mTLS, %d plaintext)\n' \
    "$(pct "$mtls" "$all")" "$all" "$conn_tls" "$conn_plain"
  printf 'denied by policy   %d requests (replicas'"'"' mesh_proxy_authorization_denials_total, action="deny")\n' "$denied"
  printf '\nconfig: %s (HTTPRoute 90/10 in route.yaml, who may call web in authorization.yaml: edit them live)\n' "$config"
  printf 'admin: controller http://127.0.0.1:19990/status  client proxy http://127.0.0.1:14191/metrics\n'
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
