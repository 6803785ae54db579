#!/usr/bin/env bash
# Runs the README's "Running the mesh" recipe exactly as written: the shell block between
# `<!-- recipe:start -->` and `<!-- recipe:end -->` in README.md, from the repository root.
# It passes when the curl through the client proxy answers 200 from the app (`replica=web-1`),
# the two proxies talked mTLS (the app received the client's identity in `mesh-client-id`, and
# the app proxy's metrics count an mTLS connection from that identity), the controller's
# /status answers, and the recipe's own `kill` stops everything it started.
# Whatever happens, every process the recipe started is killed on exit.
#
# Ports (the README's): 4140 4143 4191 (client proxy), 7080 (app), 7140 7143 7191 (app proxy),
# 8086 9990 (controller). The test fails at once, naming the port, if one is already taken.
# The recipe's `cargo build` reuses target/debug; right after `cargo test` it recompiles the
# crates whose test-only features differ (tokio's test-util), once: hence RECIPE_TIMEOUT
# (seconds, default 1800) for the whole block.
set -euo pipefail
cd "$(dirname "$0")/.."

timeout_s=${RECIPE_TIMEOUT:-1800}
work=$(mktemp -d -t mesh-readme-recipe.XXXXXX)
pgid=""

fail() {
  echo "readme recipe: FAILED: $*" >&2
  if [ -s "$work/recipe.sh" ]; then
    echo "--- the recipe (README.md, between the recipe markers)" >&2
    cat "$work/recipe.sh" >&2
  fi
  if [ -e "$work/out" ]; then
    echo "--- its output" >&2
    tail -n 60 "$work/out" >&2
  fi
  echo "readme recipe: 0 passed, 1 failed" >&2
  exit 1
}

cleanup() {
  if [ -n "$pgid" ]; then kill -KILL -- "-$pgid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The block: the ```sh fence between the markers, nothing else.
awk '
  /<!-- recipe:start -->/ { inside = 1; next }
  /<!-- recipe:end -->/ { inside = 0 }
  inside && /^```sh$/ { fence = 1; next }
  inside && fence && /^```$/ { fence = 0; blocks++; next }
  inside && fence { print }
  END { if (blocks != 1) exit 1 }
' README.md >"$work/recipe.sh" || fail "README.md must hold exactly one \`\`\`sh block between <!-- recipe:start --> and <!-- recipe:end -->"
[ -s "$work/recipe.sh" ] || fail "the recipe block in README.md is empty"

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in 4140 4143 4191 7080 7140 7143 7191 8086 9990; do
  if port_taken "$port"; then
    fail "port $port on 127.0.0.1 is already in use (by another process, or a recipe left running); free it and run again"
  fi
done

# Its own process group, so that whatever it leaves behind can be found and killed.
set -m
bash "$work/recipe.sh" >"$work/out" 2>&1 </dev/null &
pgid=$!
set +m

deadline=$((SECONDS + timeout_s))
while kill -0 "$pgid" 2>/dev/null; do
  if [ "$SECONDS" -ge "$deadline" ]; then fail "the recipe did not finish within ${timeout_s}s"; fi
  sleep 0.5
done
wait "$pgid" || true

# The recipe ends with its own `kill`: nothing it started may outlive it (a SIGTERMed proxy
# drains for a moment first).
left=""
for _ in $(seq 100); do
  left=$(pgrep -g "$pgid" 2>/dev/null || true)
  [ -z "$left" ] && break
  sleep 0.1
done
if [ -n "$left" ]; then
  ps -o pid=,args= -p "$(tr '\n' ',' <<<"$left" | sed 's/,$//')" >&2 || true
  fail "processes the recipe started are still running after its last line (the README's way to stop them does not work)"
fi

grep -q '^HTTP/1.1 200 ' "$work/out" || fail "the curl through the client proxy did not answer HTTP/1.1 200"
grep -q 'replica=web-1 status=200' "$work/out" || fail "the answer is not from the app (expected replica=web-1 from mesh-echo)"
grep -q '^header mesh-client-id: spiffe://cluster.local/ns/demo/sa/client$' "$work/out" \
  || fail "the app did not receive the client's identity (mesh-client-id: spiffe://cluster.local/ns/demo/sa/client): the request did not travel over mTLS between the proxies"
grep -q '^mesh_proxy_peer_connections_total{direction="inbound",peer_id="spiffe://cluster.local/ns/demo/sa/client",tls="true"} [1-9]' "$work/out" \
  || fail "the app proxy's /metrics do not count an mTLS connection from spiffe://cluster.local/ns/demo/sa/client (mesh_proxy_peer_connections_total, tls=\"true\")"
grep -q '"source"' "$work/out" || fail "the controller's /status did not answer"

echo "readme recipe: the curl through both proxies answered 200 from replica web-1 over mTLS (the app saw the client's identity); /status answered; the recipe's kill stopped everything"
echo "readme recipe: 1 passed, 0 failed"
