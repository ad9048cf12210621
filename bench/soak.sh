#!/usr/bin/env bash
# Soak (docs/benchmarks.md, "Soak"): a release `trustmesh serve` on SQLite
# under churn for SOAK_MINUTES (10) — 1,000 SDS streams opened and dropped
# per minute on new connections with Envoy's 61 KB node, 100 SignCsr/s, one
# refused oversized request of each kind per second, a flood of 2,000
# half-sent HTTP requests once a minute — with its memory read
# every 10 s (bench/soak.rs). Every server it starts is stopped on exit.
# Tunables (environment): SOAK_MINUTES, BENCH_STREAMS_PER_MINUTE,
#   BENCH_ISSUANCES_PER_SEC, BENCH_HOLD_SECS, BENCH_SAMPLE_SECS, BENCH_FLOOD.
set -euo pipefail

source "$(dirname "$0")/lib.sh"
bench_init soak
raise_open_files

say "machine"
machine_info | tee "$WORK/machine.txt" >&2

build_executables bin:trustmesh=trustmesh bench:soak=bench-soak -- --bin trustmesh --bench soak
TM=$WORK/trustmesh
DATA=$WORK/data
SOCKET=$WORK/socket/api.sock
start_trustmesh serve --socket "$SOCKET"
"$TM" --data-dir "$DATA" --server "https://$API" entry create \
    --spiffe-id spiffe://example.org/soak/envoy --selector "unix:uid:$(id -u)" > /dev/null

say "soak for ${SOAK_MINUTES:-10} minutes (load $(load))"
"$WORK/bench-soak" --socket "$SOCKET" --addr "https://$API" --ca-file "$DATA/ca-bundle.pem" \
    --token-file "$DATA/admin.token" --server-pid "$TM_PID" --http "$HTTP" --minutes "${SOAK_MINUTES:-10}" \
    | tee "$WORK/soak.out"

say "summary"
cat "$WORK/machine.txt"
RESULT=$(grep '^RESULT ' "$WORK/soak.out" | tail -n 1)
echo "server RSS: $(field rss_start_kib "$RESULT") KiB at start, $(field rss_at_1min_kib "$RESULT") KiB after 1 min," \
    "$(field rss_end_kib "$RESULT") KiB at the end (max $(field rss_max_kib "$RESULT")); " \
    "growth after the first minute $(field growth_after_1min_kib "$RESULT") KiB" \
    "($(field slope_kib_per_min "$RESULT") KiB/min)"
echo "load:    $(field streams "$RESULT") streams ($(field stream_errors "$RESULT") errors)," \
    "$(field issued "$RESULT") certificates ($(field issue_errors "$RESULT") errors), $(field refused "$RESULT") refused"
echo "load average at the end: $(load)"
