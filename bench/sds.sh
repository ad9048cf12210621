#!/usr/bin/env bash
# SDS benchmark (docs/benchmarks.md, "SDS streams"): memory per open SDS
# stream and fan-out latency of one trust-bundle change, against a release
# `trustmesh serve` over its local socket.
#   1. builds release (`cargo build --release --bin trustmesh --bench sds_streams`)
#      and copies the two executables (other builds share target/);
#   2. starts trustmesh on a temp data dir and socket, creates one entry
#      (spiffe://example.org/bench/envoy, selector unix:uid:<my uid>) that
#      serves every stream, and one certificate per run to revoke;
#   3. per run (N x API x flavor x node setting): a FRESH trustmesh process on
#      the same data dir (freed memory of an earlier run would hide the cost
#      of the next one), then bench/sds_streams.rs: one warm-up stream, N
#      streams over N/100 connections (default + ROOTCA, a ~61 KB node on the
#      first request only or on every request — Envoy's default — every
#      response ACKed), RSS, 10 rounds of one repeated ACK from every stream for
#      the server's CPU per ACK (counted through /metrics), then `trustmesh
#      pki cert revoke <serial>` (with SDS_BENCH_CHANGE=prepare: `trustmesh pki
#      ca prepare --role services`, a CA rotation's first step) and the time
#      until every stream has the new ROOTCA; with SDS_BENCH_CHANGE=taint, the
#      streams subscribe to SDS_BENCH_IDENTITIES (1000) identities of their
#      own instead of `default` (entries made at set-up), the change is `pki ca
#      activate --force <prepared>` then `pki ca taint <the active one>`, and
#      the time is until every stream has a new certificate;
#   4. stops everything (trap) and prints a summary against the targets.
# Tunables (environment): SDS_BENCH_NS ("1000 10000"), SDS_BENCH_APIS
# ("sds ads"), SDS_BENCH_FLAVORS ("delta sotw"), SDS_BENCH_NODES ("first
# every"), SDS_BENCH_CHANGE ("revoke", "prepare" or "taint"), SDS_BENCH_IDENTITIES (1000),
# BENCH_PER_CONN (100), BENCH_OPEN_CONCURRENCY (100),
# BENCH_NODE_BYTES (61000), BENCH_ACK_ROUNDS (10), SDS_BENCH_SUMMARY_OUT (file).
set -euo pipefail

source "$(dirname "$0")/lib.sh"
bench_init sds
NS=${SDS_BENCH_NS:-1000 10000}
APIS=${SDS_BENCH_APIS:-sds ads}
FLAVORS=${SDS_BENCH_FLAVORS:-delta sotw}
NODES=${SDS_BENCH_NODES:-first every}
CHANGE=${SDS_BENCH_CHANGE:-revoke}
case "$CHANGE" in revoke|prepare|taint) ;; *) die "SDS_BENCH_CHANGE is revoke, prepare or taint, not $CHANGE" ;; esac
IDENTITIES=${SDS_BENCH_IDENTITIES:-1000}
ID_PREFIX=spiffe://example.org/bench/id-
# 10,000 streams over ~100 connections need few descriptors, but be generous.
raise_open_files

say "machine"
machine_info | tee "$WORK/machine.txt" >&2

build_executables bin:trustmesh=trustmesh bench:sds_streams=bench-sds -- --bin trustmesh --bench sds_streams
TM=$WORK/trustmesh
BENCH=$WORK/bench-sds
DATA=$WORK/data
SOCKET=$WORK/socket/api.sock
tm() { "$TM" --data-dir "$DATA" --server "https://$API" "$@"; }

say "set-up: one entry for every stream, one certificate per run to revoke"
start_trustmesh setup --socket "$SOCKET"
tm entry create --spiffe-id spiffe://example.org/bench/envoy --selector "unix:uid:$(id -u)" >&2
if [ "$CHANGE" = taint ]; then
    # One entry per identity the streams subscribe to, all for this uid.
    seq 0 $((IDENTITIES - 1)) | xargs -P 4 -I{} "$TM" --data-dir "$DATA" --server "https://$API" \
        entry create --spiffe-id "$ID_PREFIX{}" --selector "unix:uid:$(id -u)" > /dev/null
    echo "$IDENTITIES entries made" >&2
fi
RUNS=()
for n in $NS; do
    for api in $APIS; do
        for flavor in $FLAVORS; do
            for node in $NODES; do
                RUNS+=("$n:$api:$flavor:$node")
            done
        done
    done
done
SERIALS=()
for i in "${!RUNS[@]}"; do
    serial=$(tm --output json pki cert generate --spiffe-id "spiffe://example.org/bench/revoke-$i" \
        --output-cert "$WORK/revoke-$i.pem" --output-key "$WORK/revoke-$i.key" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["serial"])')
    SERIALS+=("$serial")
done
stop_pid "$TM_PID" trustmesh
TM_PID=""

for i in "${!RUNS[@]}"; do
    IFS=: read -r n api flavor node <<< "${RUNS[$i]}"
    name=$n-$api-$flavor-$node
    every=0
    [ "$node" = every ] && every=1
    say "run $((i + 1))/${#RUNS[@]}: $n $api $flavor streams, node on $node request(s) (load before: $(load))"
    start_trustmesh "tm-$name" --socket "$SOCKET"
    ca_ids() { # the services CAs in state $1
        tm --output json pki ca list | python3 -c 'import json,sys
print(" ".join(c["fingerprint"] for c in json.load(sys.stdin) if c["role"] == "services" and c["state"] == sys.argv[1]))' "$1"
    }
    extra=()
    if [ "$CHANGE" = revoke ]; then
        change=("$TM" --data-dir "$DATA" --server "https://$API" pki cert revoke "${SERIALS[$i]}")
    else
        # One CA of a role is prepared at a time: discard the last run's.
        for id in $(ca_ids prepared); do tm pki ca revoke "$id" > /dev/null; done
        if [ "$CHANGE" = prepare ]; then
            change=("$TM" --data-dir "$DATA" --server "https://$API" pki ca prepare --role services)
        else
            old=$(ca_ids active)
            new=$(tm --output json pki ca prepare --role services | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["fingerprint"])')
            change=(sh -c "\"\$0\" --data-dir \"\$1\" --server \"\$2\" pki ca activate --force $new >/dev/null &&
                \"\$0\" --data-dir \"\$1\" --server \"\$2\" pki ca taint $old" "$TM" "$DATA" "https://$API")
            extra=(--cert-names "$ID_PREFIX:$IDENTITIES" --timeout $((IDENTITIES / 50 + 60)))
        fi
    fi
    "$BENCH" --socket "$SOCKET" --server-pid "$TM_PID" --streams "$n" --api "$api" --flavor "$flavor" \
        --node-every "$every" --metrics-url "http://$HTTP/metrics" "${extra[@]}" -- "${change[@]}" \
        | tee "$WORK/run-$name.out"
    echo "load after: $(load)" >&2
    grep -c '"xds stream opened"' "$WORK/tm-$name.log" | sed 's/^/server log: streams opened: /' >&2 || true
    stop_pid "$TM_PID" trustmesh
    TM_PID=""
done

say "summary"
{
    cat "$WORK/machine.txt"
    echo
    printf '  %-6s %-4s %-6s %-6s %8s %10s %9s %9s %9s %9s %9s %s\n' N api flavor node open_s "KiB/stream" "ack_µs" "cmd_ms" \
        "p50_ms" "p99_ms" "max_ms" "load (mem | fan-out)"
    for run in "${RUNS[@]}"; do
        IFS=: read -r n api flavor node <<< "$run"
        o=$WORK/run-$n-$api-$flavor-$node.out
        [ -f "$o" ] || continue
        printf '  %-6s %-4s %-6s %-6s %8s %10s %9s %9s %9s %9s %9s %s | %s\n' "$n" "$api" "$flavor" "$node" \
            "$(field open_s "$o")" "$(python3 -c "print(f'{$(field per_stream_bytes "$o")/1024:.1f}')")" \
            "$(field ack_cpu_us "$o")" "$(field cmd_ms "$o")" "$(field p50_ms "$o")" "$(field p99_ms "$o")" \
            "$(field max_ms "$o")" "$(field load_mem "$o")" "$(field load_fanout "$o")"
    done
    echo
    echo "  (p50/p99/max: from the $CHANGE command's return to each stream's new ROOTCA (taint: certificate); KiB/stream: VmRSS"
    echo "   delta / N; ack_µs: server CPU per repeated ACK, node as the run sends it)"
    for api in $APIS; do
        for flavor in $FLAVORS; do
            for node in $NODES; do
                o=$WORK/run-10000-$api-$flavor-$node.out
                [ -f "$o" ] || continue
                python3 - "$api $flavor, node on $node" "$(field per_stream_bytes "$o")" "$(field p99_ms "$o")" <<'EOF'
import sys
what, mem, p99 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
kib = mem / 1024
print(f"  target memory <= 20 KiB/stream at 10,000 ({what}): {kib:.1f} KiB -> "
      + ("MET" if kib <= 20 else f"MISSED by {kib - 20:.1f} KiB ({kib / 20:.1f}x)"))
print(f"  target fan-out p99 <= 250 ms at 10,000 ({what}): {p99:.0f} ms -> "
      + ("MET" if p99 <= 250 else f"MISSED by {p99 - 250:.0f} ms ({p99 / 250:.1f}x)"))
EOF
            done
            first=$WORK/run-10000-$api-$flavor-first.out
            every=$WORK/run-10000-$api-$flavor-every.out
            [ -f "$first" ] && [ -f "$every" ] || continue
            python3 - "$api $flavor" "$(field ack_cpu_us "$first")" "$(field ack_cpu_us "$every")" <<'EOF'
import sys
what, first, every = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
ratio = every / first
print(f"  target per-ACK CPU with the node <= 1.5x without ({what}): {every:.1f} vs {first:.1f} us = {ratio:.2f}x -> "
      + ("MET" if ratio <= 1.5 else "MISSED"))
EOF
        done
    done
} | tee "$WORK/summary.txt"
if [ -n "${SDS_BENCH_SUMMARY_OUT:-}" ]; then
    mkdir -p "$(dirname "$SDS_BENCH_SUMMARY_OUT")"
    cat "$WORK"/run-*.out "$WORK/summary.txt" > "$SDS_BENCH_SUMMARY_OUT"
fi
