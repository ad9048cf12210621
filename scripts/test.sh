#!/usr/bin/env bash
# The README's test command: installs every test dependency, then builds the
# test binaries once and runs every test. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh

export CARGO_TERM_COLOR=never
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --no-fail-fast --profile ci
else
    cargo test --no-fail-fast
fi
