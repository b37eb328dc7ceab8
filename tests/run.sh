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
# Left out there, because no rule they exercise reads the hour, and they are the longest: the
# benchmark's smoke run; the NATS cluster's and the services' failovers (processes' clocks play
# no part in an election or a lease, which count in monotonic time); the gateway replicas' shared
# directory; the fault suite (kills, cuts and full disks under a write load: its workload has no
# time rule, and the domains' time rules are the other scenarios'); NATS's permissions and the
# manifests; the REST API's fuzzer (its inputs are the document's, whatever the hour).
clock_skips=(--skip bench_smoke --skip shards:: --skip cluster:: --skip failover:: --skip gateway_replicas:: --skip faults::
  --skip tenancy::nats_refuses --skip deploy_manifests --skip openapi_fuzz)
tests/at-hour.sh 03:00 "${clock_skips[@]}"
tests/at-hour.sh 12:00 "${clock_skips[@]}"
