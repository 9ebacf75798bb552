#!/usr/bin/env bash
# Headless Chromium for the dashboard tests (tests/integration/test_dashboard.py).
# Idempotent and quiet: does nothing when a chromium is already on PATH, and
# prints apt's output only when the install fails.  Debian's package via apt
# (root on dev machines and CI); no browser download of its own.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_chromium.sh: chromium is missing; run as root, or: sudo apt-get install -y chromium" >&2
    exit 1
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "install_chromium.sh: apt-get install chromium failed" >&2
    exit 1
fi
command -v chromium >/dev/null
