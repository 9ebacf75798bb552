#!/usr/bin/env bash
# Mosquitto, the MQTT broker the MQTT tests start (tests/integration/mqtt_broker.py).
# Idempotent and quiet: does nothing when mosquitto is already installed, and
# prints apt's output only when the install fails.  Debian's package via apt
# (root on dev machines and CI).  Installing it also enables a system service on
# port 1883; the tests never use it (they start their own broker on a free port).
set -euo pipefail

if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_mosquitto.sh: mosquitto is missing; run as root, or: sudo apt-get install -y mosquitto" >&2
    exit 1
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
install() { apt-get install -y -qq --no-install-recommends mosquitto; }
# apt-get update only when the package lists do not know mosquitto yet.
if ! { { apt-cache show mosquitto >/dev/null 2>&1 || apt-get update -qq; } && install; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "install_mosquitto.sh: apt-get install mosquitto failed" >&2
    exit 1
fi
[ -x /usr/sbin/mosquitto ] || command -v mosquitto >/dev/null
