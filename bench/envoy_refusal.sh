#!/usr/bin/env bash
# Command-to-refusal at a real Envoy (docs/benchmarks.md, "Revocation"):
# runs the end-to-end test `deny_cuts_new_handshakes_and_open_connections_within_a_second`
# (tests/revocation.rs: a server Envoy with the deny filter, a denied and a
# healthy client, each with an open keep-alive connection and new connections,
# probes every 20 ms) RUNS times and collects the two latencies it prints,
# measured from `trustmesh pki identity deny` returning:
#   - the denied client's new handshakes refused (CRL over SDS);
#   - its already-open connection answered 403 (RBAC deny list over ECDS).
# The probes' 20 ms pace is the resolution. Tunables: RUNS (5).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cargo nextest --version >/dev/null
for i in $(seq 1 "$RUNS"); do
    cargo nextest run --test revocation --no-capture deny_cuts_new_handshakes 2>&1 \
        | grep -E "new handshakes refused|already-open connection answered" >>"$out"
    echo "run $i done (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
done
echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "-- new handshakes refused after the command returned:"
grep -o "refused [0-9.]*[mµn]*s" "$out" | sed 's/refused //'
echo "-- open connection answered 403 after the command returned:"
grep -o "403 [0-9.]*[mµn]*s" "$out" | sed 's/403 //'
