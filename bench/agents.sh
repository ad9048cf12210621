#!/usr/bin/env bash
# Node agent benchmarks (docs/benchmarks.md, "Node agents"), against release
# builds of `trustmesh serve` and `trustmesh agent`:
#   1. fleet fan-out: one server; N_STREAMS (10,000) Envoy-like SDS streams
#      (bench/sds_streams.rs: default + ROOTCA, ~61 KB node on the first
#      request, every response ACKed) first on the server's own socket, then
#      behind N_AGENTS (100) agents hosted in one process (bench/agents.rs
#      fleet: each its own data directory, join token, node, entry and Unix
#      socket), the streams spread over their sockets; each time `trustmesh
#      pki identity deny` of an identity with a live certificate, and the time
#      from the command's return until every stream has the new ROOTCA (CRL);
#   2. server cost per connected agent and reconnect storm (agents.rs
#      server-cost): the server's RSS without and with COST_AGENTS (1,000)
#      agents, its CPU over IDLE_S (60) idle seconds, then a restart and the
#      time until every agent has a state from the new process, with the
#      server's RSS peak;
#   3. agent footprint: a real `trustmesh agent` with 100 entries of its node
#      (all for this uid, so all its SVIDs are minted and cached) and 100 SDS
#      streams each holding one of them (sds_streams --cert-names,
#      --server-pid = the agent); then a fresh agent process with 1,000
#      entries and the same 100 streams: 900 more SVIDs cached;
#   4. served during an outage (agents.rs first-response): a real agent, the
#      server killed, SAMPLES (1,000) new Workload API callers in turn.
# Tunables (environment): AGENT_BENCH_AGENTS (100), AGENT_BENCH_STREAMS
# (10000), AGENT_BENCH_COST_AGENTS (1000), AGENT_BENCH_IDLE_S (60),
# AGENT_BENCH_FOOTPRINT ("100 1000": SVIDs cached), AGENT_BENCH_FOOTPRINT_STREAMS (100),
# AGENT_BENCH_SAMPLES (1000),
# AGENT_BENCH_PARTS ("fleet cost footprint outage"), AGENT_BENCH_SUMMARY_OUT (file).
set -euo pipefail

source "$(dirname "$0")/lib.sh"
bench_init agents
AGENTS=${AGENT_BENCH_AGENTS:-100}
STREAMS=${AGENT_BENCH_STREAMS:-10000}
COST_AGENTS=${AGENT_BENCH_COST_AGENTS:-1000}
IDLE_S=${AGENT_BENCH_IDLE_S:-60}
FOOTPRINT=${AGENT_BENCH_FOOTPRINT:-100 1000}
FOOTPRINT_STREAMS=${AGENT_BENCH_FOOTPRINT_STREAMS:-100}
SAMPLES=${AGENT_BENCH_SAMPLES:-1000}
PARTS=${AGENT_BENCH_PARTS:-fleet cost footprint outage}
raise_open_files
FLEET_PID=""
AGENT_PID=""
trap 'rc=$?; stop_pid "$FLEET_PID" fleet; stop_pid "$AGENT_PID" agent; (exit $rc); bench_cleanup' EXIT

say "machine"
machine_info | tee "$WORK/machine.txt" >&2

build_executables bin:trustmesh=trustmesh bench:sds_streams=bench-sds bench:agents=bench-agents -- \
    --bin trustmesh --bench sds_streams --bench agents
TM=$WORK/trustmesh
SDS=$WORK/bench-sds
AGB=$WORK/bench-agents
DATA=$WORK/data
SOCKET=$WORK/socket/api.sock
tm() { "$TM" --data-dir "$DATA" --server "https://$API" "$@"; }
# An identity with a live certificate: denying it changes every CRL.
doomed() { # name
    tm pki cert generate --spiffe-id "spiffe://example.org/bench/$1" \
        --output-cert "$WORK/$1.pem" --output-key "$WORK/$1.key" > /dev/null
    echo "spiffe://example.org/bench/$1"
}

if [[ " $PARTS " == *" fleet "* ]]; then
    say "fleet: $STREAMS streams on the server's socket, then behind $AGENTS agents"
    start_trustmesh fleet-server --socket "$SOCKET"
    tm entry create --spiffe-id spiffe://example.org/bench/envoy --selector "unix:uid:$(id -u)" > /dev/null
    id=$(doomed deny-server)
    "$SDS" --socket "$SOCKET" --server-pid "$TM_PID" --streams "$STREAMS" --api ads --flavor sotw \
        --ack-rounds 0 -- "$TM" --data-dir "$DATA" --server "https://$API" pki identity deny "$id" --reason bench \
        | tee "$WORK/fleet-server.out"
    coproc FLEET { exec "$AGB" fleet --server "https://$API" --data "$DATA" --dir "$WORK/fleet" --agents "$AGENTS" 2> "$WORK/fleet.log"; }
    read -r ready <&"${FLEET[0]}" || die "the fleet did not start"
    sockets=${ready#READY sockets=}
    id=$(doomed deny-agents)
    "$SDS" --socket "$sockets" --server-pid "$FLEET_PID" --streams "$STREAMS" --api ads --flavor sotw \
        --ack-rounds 0 --timeout 120 -- "$TM" --data-dir "$DATA" --server "https://$API" pki identity deny "$id" --reason bench \
        | tee "$WORK/fleet-agents.out"
    exec {FLEET[1]}>&-
    stop_pid "$FLEET_PID" fleet
    FLEET_PID=""
    stop_pid "$TM_PID" trustmesh
    TM_PID=""
    rm -rf "$DATA"
fi

if [[ " $PARTS " == *" cost "* ]]; then
    say "server cost of $COST_AGENTS connected agents, idle ${IDLE_S}s, then a restart"
    "$AGB" server-cost --bin "$TM" --dir "$WORK/cost" --agents "$COST_AGENTS" --idle "$IDLE_S" | tee "$WORK/cost.out"
fi

if [[ " $PARTS " == *" footprint "* ]]; then
    start_trustmesh footprint-server --socket "$SOCKET"
    made=0
    for n in $FOOTPRINT; do
        say "agent footprint: $n entries of its node (SVIDs cached), $FOOTPRINT_STREAMS SDS streams each holding one"
        seq "$made" $((n - 1)) | xargs -P 4 -I{} "$TM" --data-dir "$DATA" --server "https://$API" \
            entry create --spiffe-id "spiffe://example.org/bench/fp/w-{}" --selector "unix:uid:$(id -u)" --node fp > /dev/null
        made=$n
        home=$WORK/fp-$n
        mkdir -p "$home"
        tm --output json token mint join fp | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])' > "$home/join"
        "$TM" agent --log-format json --server "https://$API" --trust-bundle "$DATA/ca-bundle.pem" --node-id fp \
            --join-token-file "$home/join" --data-dir "$home/data" --socket "$home/api.sock" \
            --http-listen 127.0.0.1:0 2> "$WORK/fp-$n.log" &
        AGENT_PID=$!
        for _ in $(seq 1 300); do [ -S "$home/api.sock" ] && break; sleep 0.1; done
        "$SDS" --socket "$home/api.sock" --server-pid "$AGENT_PID" --streams "$FOOTPRINT_STREAMS" --api ads --flavor sotw \
            --ack-rounds 0 --cert-names "spiffe://example.org/bench/fp/w-:$FOOTPRINT_STREAMS" --settle 5 | tee "$WORK/fp-$n.out"
        stop_pid "$AGENT_PID" agent
        AGENT_PID=""
    done
    stop_pid "$TM_PID" trustmesh
    TM_PID=""
fi

if [[ " $PARTS " == *" outage "* ]]; then
    say "served during an outage: $SAMPLES new Workload API callers, server killed"
    "$AGB" first-response --bin "$TM" --dir "$WORK/outage" --samples "$SAMPLES" | tee "$WORK/outage.out"
fi

say "summary"
{
    cat "$WORK/machine.txt"
    echo
    if [ -f "$WORK/fleet-agents.out" ]; then
        for where in server agents; do
            o=$WORK/fleet-$where.out
            printf '  fan-out of identity deny to %s streams on %-28s p50 %6s ms  p99 %6s ms  max %6s ms  (command %s ms)\n' \
                "$STREAMS" "$([ $where = server ] && echo "the server's socket" || echo "$AGENTS agents' sockets")" \
                "$(field p50_ms "$o")" "$(field p99_ms "$o")" "$(field max_ms "$o")" "$(field cmd_ms "$o")"
        done
        p99=$(field p99_ms "$WORK/fleet-agents.out")
        python3 -c "import sys; p=float('$p99'); print(f'  target fleet fan-out p99 <= 500 ms: {p:.0f} ms -> ' + ('MET' if p <= 500 else 'MISSED'))"
    fi
    if [ -f "$WORK/cost.out" ]; then
        cost=$(grep '^RESULT server_cost' "$WORK/cost.out")
        storm=$(grep '^RESULT storm' "$WORK/cost.out")
        per=$(field per_agent_bytes "$cost")
        idle=$(field idle_cpu_ms "$cost")
        synced=$(field synced_s "$storm")
        ratio=$(field peak_over_steady "$storm")
        python3 - "$per" "$idle" "$synced" "$ratio" "$COST_AGENTS" "$IDLE_S" <<'EOF'
import sys
per, idle, synced, ratio, n, secs = (float(x) for x in sys.argv[1:])
print(f"  target server cost <= 64 KiB per connected agent ({n:.0f} agents): {per/1024:.1f} KiB -> " + ("MET" if per <= 65536 else "MISSED"))
print(f"  server CPU over {secs:.0f} s idle with {n:.0f} agents: {idle:.0f} ms ({idle / secs / 10:.3f} % of one core)")
print(f"  target reconnect storm: all {n:.0f} agents synced within 10 s: {synced:.2f} s -> " + ("MET" if synced <= 10 else "MISSED"))
print(f"  target server memory peak <= 2x steady during the storm: {ratio:.2f}x -> " + ("MET" if ratio <= 2 else "MISSED"))
EOF
    fi
    set -- $FOOTPRINT
    if [ $# -ge 2 ] && [ -f "$WORK/fp-$1.out" ] && [ -f "$WORK/fp-$2.out" ]; then
        python3 - "$1" "$(field rss_open_kib "$WORK/fp-$1.out")" "$2" "$(field rss_open_kib "$WORK/fp-$2.out")" <<'EOF'
import sys
a, ra, b, rb = (float(x) for x in sys.argv[1:])
print(f"  target agent RSS <= 30 MiB with {a:.0f} SVIDs held: {ra/1024:.1f} MiB -> " + ("MET" if ra <= 30 * 1024 else "MISSED"))
per = (rb - ra) / (b - a)
print(f"  target <= 8 KiB per additional cached SVID ({a:.0f} -> {b:.0f} SVIDs, same streams): {per:.1f} KiB -> " + ("MET" if per <= 8 else "MISSED"))
EOF
    fi
    if [ -f "$WORK/outage.out" ]; then
        p99=$(field p99_ms "$WORK/outage.out")
        python3 -c "p=float('$p99'); print(f'  target first response from the agent, server down, p99 <= 5 ms: {p:.2f} ms (p50 $(field p50_ms "$WORK/outage.out") ms) -> ' + ('MET' if p <= 5 else 'MISSED'))"
    fi
} | tee "$WORK/summary.txt"
if [ -n "${AGENT_BENCH_SUMMARY_OUT:-}" ]; then
    mkdir -p "$(dirname "$AGENT_BENCH_SUMMARY_OUT")"
    cat "$WORK"/*.out "$WORK/summary.txt" > "$AGENT_BENCH_SUMMARY_OUT" 2>/dev/null || true
fi
