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

# openssl verifies every certificate and CRL the end-to-end tests obtain.
install_tools() {
    apt_install_missing openssl ca-certificates
}
install_tools
