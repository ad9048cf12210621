#!/usr/bin/env bash
# SDS benchmark (docs/benchmarks.md, "SDS streams"): memory per open SDS
# stream and fan-out latency of one trust-bundle change, against a release
# `trustmesh serve` over its local socket.
#   1. builds release (`cargo build --release --bin trustmesh --bench sds_streams`)
#      and copies the two executables (other builds share target/);
#   2. starts trustmesh on a temp data dir and socket, creates one entry
#      (spiffe://example.org/bench/envoy, selector unix:uid:<my uid>) that
#      serves every stream, and one certificate per run to revoke;
#   3. per run (N x flavor): a FRESH trustmesh process on the same data dir
#      (freed memory of an earlier run would hide the cost of the next one),
#      then bench/sds_streams.rs: one warm-up stream, N streams (default +
#      ROOTCA, ~61 KB node on the first request, every response ACKed), RSS,
#      then `trustmesh pki cert revoke <serial>` and the time until every
#      stream has the new ROOTCA;
#   4. stops everything (trap) and prints a summary against the targets.
# Tunables (environment): SDS_BENCH_NS ("1000 10000"), SDS_BENCH_FLAVORS
# ("delta sotw"), BENCH_PER_CONN (100), BENCH_OPEN_CONCURRENCY (100),
# BENCH_NODE_BYTES (61000), BENCH_API (sds), SDS_BENCH_SUMMARY_OUT (file).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
NS=${SDS_BENCH_NS:-1000 10000}
FLAVORS=${SDS_BENCH_FLAVORS:-delta sotw}

# 10,000 streams over ~100 connections need few descriptors, but be generous.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "sds.sh: open-files limit $(ulimit -n)" >&2

WORK=$(mktemp -d "${TMPDIR:-/tmp}/trustmesh-sds-bench.XXXXXX")
TM_PID=""

stop_pid() { # pid name: SIGTERM, wait up to 10 s, then SIGKILL
    local pid=$1 name=$2
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    echo "sds.sh: $name (pid $pid) ignored SIGTERM, killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$TM_PID" trustmesh
    if [ "$rc" -ne 0 ] && [ -d "$WORK" ]; then
        for log in "$WORK"/*.log; do
            [ -f "$log" ] || continue
            echo "---- last lines of $log" >&2
            tail -n 5 "$log" | cut -c1-400 >&2
        done
    fi
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say() { printf '\n== %s\n' "$*" >&2; }
die() { echo "sds.sh: $*" >&2; exit 1; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
field() { # key file: value of key= in the last RESULT line
    grep '^RESULT ' "$2" | tail -n 1 | tr ' ' '\n' | sed -n "s/^$1=//p" | tr -d '"'
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

say "cargo build --release --bin trustmesh --bench sds_streams"
cargo build --release --bin trustmesh --bench sds_streams --message-format=json-render-diagnostics > "$WORK/build.json"
python3 - "$WORK/build.json" "$WORK" <<'EOF'
import json, shutil, sys
want = {("bin", "trustmesh"): "trustmesh", ("bench", "sds_streams"): "bench-sds"}
found = set()
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    t = m["target"]
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
BENCH=$WORK/bench-sds
DATA=$WORK/data
SOCKET=$WORK/socket/api.sock
API=""

start_tm() { # log-name: a fresh trustmesh; sets TM_PID and API
    "$TM" serve --data-dir "$DATA" --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --log-format json \
        --socket "$SOCKET" 2> "$WORK/$1.log" &
    TM_PID=$!
    API=""
    for _ in $(seq 1 600); do
        kill -0 "$TM_PID" 2>/dev/null || die "trustmesh exited before it was ready"
        API=$(python3 - "$WORK/$1.log" <<'EOF'
import json, sys
for line in open(sys.argv[1], errors="replace"):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    f = m.get("fields", m)
    if f.get("message") == "ready":
        print(f["listen"])
        break
EOF
)
        [ -n "$API" ] && break
        sleep 0.1
    done
    [ -n "$API" ] || die "no ready line from trustmesh within 60 s"
    echo "trustmesh pid $TM_PID ready: listen $API, socket $SOCKET" >&2
}
tm() { "$TM" --data-dir "$DATA" --server "https://$API" "$@"; }

say "set-up: one entry for every stream, one certificate per run to revoke"
start_tm setup
tm entry create --spiffe-id spiffe://example.org/bench/envoy --selector "unix:uid:$(id -u)" >&2
RUNS=()
for n in $NS; do
    for flavor in $FLAVORS; do
        RUNS+=("$n:$flavor")
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
    n=${RUNS[$i]%%:*}
    flavor=${RUNS[$i]#*:}
    say "run $((i + 1))/${#RUNS[@]}: $n $flavor streams (load before: $(load))"
    start_tm "tm-$n-$flavor"
    "$BENCH" --socket "$SOCKET" --server-pid "$TM_PID" --streams "$n" --flavor "$flavor" \
        -- "$TM" --data-dir "$DATA" --server "https://$API" pki cert revoke "${SERIALS[$i]}" \
        | tee "$WORK/run-$n-$flavor.out"
    echo "load after: $(load)" >&2
    grep -c '"xds stream opened"' "$WORK/tm-$n-$flavor.log" | sed 's/^/server log: streams opened: /' >&2 || true
    stop_pid "$TM_PID" trustmesh
    TM_PID=""
done

say "summary"
{
    cat "$WORK/machine.txt"
    echo
    printf '  %-6s %-6s %8s %10s %12s %9s %9s %9s %9s %11s %11s %s\n' N flavor open_s "KiB/stream" "anon KiB/st" "cmd_ms" "p50_ms" "p99_ms" "max_ms" "p99_start" "p99_first" "load (mem | fan-out)"
    for run in "${RUNS[@]}"; do
        n=${run%%:*}
        flavor=${run#*:}
        o=$WORK/run-$n-$flavor.out
        [ -f "$o" ] || continue
        printf '  %-6s %-6s %8s %10s %12s %9s %9s %9s %9s %11s %11s %s | %s\n' "$n" "$flavor" "$(field open_s "$o")" \
            "$(python3 -c "print(f'{$(field per_stream_bytes "$o")/1024:.1f}')")" \
            "$(python3 -c "print(f'{$(field anon_per_stream_bytes "$o")/1024:.1f}')")" \
            "$(field cmd_ms "$o")" "$(field p50_ms "$o")" "$(field p99_ms "$o")" "$(field max_ms "$o")" \
            "$(field p99_from_start_ms "$o")" "$(field p99_from_first_ms "$o")" \
            "$(field load_mem "$o")" "$(field load_fanout "$o")"
    done
    echo
    echo "  (p50/p99/max: from the revoke command's return to each stream's new ROOTCA; p99_start: from the"
    echo "   command's start; p99_first: from the first stream that had it; KiB/stream: VmRSS delta / N)"
    for flavor in $FLAVORS; do
        o=$WORK/run-10000-$flavor.out
        [ -f "$o" ] || continue
        python3 - "$flavor" "$(field per_stream_bytes "$o")" "$(field p99_ms "$o")" <<'EOF'
import sys
flavor, mem, p99 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
kib = mem / 1024
print(f"  target memory <= 20 KiB/stream at 10,000 ({flavor}): {kib:.1f} KiB -> "
      + ("MET" if kib <= 20 else f"MISSED by {kib - 20:.1f} KiB ({kib / 20:.1f}x)"))
print(f"  target fan-out p99 <= 250 ms at 10,000 ({flavor}): {p99:.0f} ms -> "
      + ("MET" if p99 <= 250 else f"MISSED by {p99 - 250:.0f} ms ({p99 / 250:.1f}x)"))
EOF
    done
} | tee "$WORK/summary.txt"
if [ -n "${SDS_BENCH_SUMMARY_OUT:-}" ]; then
    mkdir -p "$(dirname "$SDS_BENCH_SUMMARY_OUT")"
    cat "$WORK"/run-*.out "$WORK/summary.txt" > "$SDS_BENCH_SUMMARY_OUT"
fi
