#!/usr/bin/env bash
# The whole system on a 3-node NATS JetStream cluster, on this machine (loopback): what
# deploy/run.sh runs, with three nats-server nodes (deploy/nats/cluster/node-{1,2,3}.conf, client
# ports 4222-4224, monitoring 8222-8224) instead of one. Every process is given the three URLs and
# fails over between them; the events and revocations streams keep a copy on each node, so that a
# node lost (try: kill one nats-server) loses nothing acknowledged, and the supervision starts it
# again. State lives in var/cluster/ (apart from the single node's var/), logs in var/cluster/logs/.
#
# Two gateway replicas (ports 8080 and 8081) share the operators and sessions (a NATS key-value
# bucket): log in at one, carry on at the other; kill one and the console reconnects to it once it
# is started again, or open the other.
#
# Each domain service runs twice (VIGIE_SERVICE_STANDBYS=1): an active instance and a standby on
# the ports 100 further (50161-50164), which follows the active one's state (a NATS key-value
# bucket) and takes over when it dies (see docs/deploy.md: stop the active vigie-lighting for good,
# and the other logs "this instance is the active one" about 20 s later; killed only, it is
# started again at once and takes its own lease back). The gateway and the simulator are given
# both.
#
# Environment: as deploy/run.sh's (VIGIE_TERRITORY, VIGIE_PROFILE, VIGIE_HTTP_PORT, VIGIE_SIM_*).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VIGIE_NATS_NODES=3
export VIGIE_STATE_DIR="${VIGIE_STATE_DIR:-var/cluster}"
export VIGIE_GATEWAY_REPLICAS="${VIGIE_GATEWAY_REPLICAS:-2}"
export VIGIE_SERVICE_STANDBYS="${VIGIE_SERVICE_STANDBYS:-1}"
exec "$root/deploy/run.sh" "$@"
