#!/usr/bin/env bash
# Runs every test: unit tests of each crate, the console's type check, unit tests and build, and the end-to-end
# scenarios against a real nats-server and the real binaries; then the clock checks: the end-to-end
# scenarios again with our processes' clocks at 03:00 and at 12:00 local (tests/at-hour.sh), so that
# a test that depends on the hour fails here, not at night. Installs what is missing first.
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

echo "== the clock checks: the end-to-end scenarios at night and at midday" >&2
# The benchmark's smoke run measures nothing that depends on the hour, and is the longest; the
# NATS cluster's failover neither (its processes' clocks play no part in an election).
tests/at-hour.sh 03:00 --skip bench_smoke --skip cluster::
tests/at-hour.sh 12:00 --skip bench_smoke --skip cluster::
