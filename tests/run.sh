#!/usr/bin/env bash
# Runs every test: unit tests of each crate, the console's type check, unit tests and build, and the end-to-end
# scenarios against a real nats-server and the real binaries. Installs what is missing first.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# nats-server, and Debian's chromium for the console's browser test.
deploy/install-tools.sh --browser >/dev/null

echo "== console: type check, unit tests and build" >&2
(cd ui-client && npm ci --no-fund --no-audit --loglevel=error && npm run test:unit --silent && npm run build --silent)

echo "== binaries (the end-to-end tests start them)" >&2
cargo build --workspace --bins --locked

echo "== tests" >&2
cargo test --workspace --locked
