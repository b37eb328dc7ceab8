#!/usr/bin/env bash
# Runs end-to-end tests with every process of ours seeing a fixed local hour of today, so that a
# test that depends on the hour fails here rather than at night in CI (issue: CI failed at 03:07).
#
#   tests/at-hour.sh HH:MM [TEST-FILTER ...]
#
# The clock is shifted, not frozen: libfaketime (Debian's faketime) adds one fixed offset to the
# wall clock of the test binary and of everything it starts (services, gateway, simulator, node),
# so that they agree with each other and time runs on; the monotonic clock is left alone (timers
# and timeouts stay real). nats-server, a static Go binary, keeps the real clock: nothing of ours
# compares its time with the server's. The browser keeps it too (Chromium does not run under
# libfaketime), as an operator's PC whose clock differs from the gateway's would.
#
# The hour is local to VIGIE_CLOCK_ZONE (default Europe/Paris, the time zone of the territory in
# ../shared/data). Filters are the test harness's (substrings of test names); none runs them all.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

hour="${1:?usage: tests/at-hour.sh HH:MM [TEST-FILTER ...]}"
shift
zone="${VIGIE_CLOCK_ZONE:-Europe/Paris}"

lib=""
for candidate in /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 /usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1 \
  /usr/lib/faketime/libfaketime.so.1; do
  if [ -f "$candidate" ]; then lib="$candidate"; break; fi
done
if [ -z "$lib" ]; then
  echo "installing faketime (Debian package) for the clock checks" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq faketime >/dev/null
  lib="$(dpkg -L libfaketime | grep '/libfaketime.so.1$' | head -n 1)"
fi

# GNU date takes an unknown zone for UTC without a word: the zone must be known here.
if [ ! -e "/usr/share/zoneinfo/$zone" ]; then
  echo "installing tzdata (Debian package): the time zone $zone is unknown here" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq tzdata >/dev/null
  [ -e "/usr/share/zoneinfo/$zone" ] || { echo "the time zone $zone is unknown" >&2; exit 1; }
fi

# The e2e test binary, built (cargo itself must not run under a shifted clock: its freshness
# checks compare times). Build errors show; the JSON messages go to the parser. Built as
# `cargo test --workspace` builds it (tests/run.sh just did): with `-p tests` alone, cargo unifies
# the dependencies' features differently and rebuilds half of them (2.5 minutes of CI).
messages="$(mktemp)"
trap 'rm -f "$messages"' EXIT
cargo test --workspace --locked --no-run --message-format=json >"$messages"
binary="$(python3 -c 'import json,sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "e2e" and m.get("executable"):
        print(m["executable"])' "$messages")"
[ -x "$binary" ] || { echo "the e2e test binary was not built" >&2; exit 1; }

# The offset, once the build is done: the run begins at the hour asked.
today="$(TZ="$zone" date +%F)"
target="$(date -d "TZ=\"$zone\" $today $hour" +%s)"
offset=$((target - $(date +%s)))
sign="+"; [ "$offset" -lt 0 ] && sign=""

echo "== e2e tests at $hour in $zone (clock shifted by ${sign}${offset} s): ${*:-all}" >&2
cd "$root/tests"
LD_PRELOAD="$lib" FAKETIME="${sign}${offset}" FAKETIME_DONT_FAKE_MONOTONIC=1 \
  VIGIE_EXPECT_LOCAL_HOUR="$hour" VIGIE_EXPECT_LOCAL_ZONE="$zone" \
  "$binary" "$@"
