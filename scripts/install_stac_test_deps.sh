#!/usr/bin/env bash
# Install the Debian packages the STAC tests need: PostgreSQL 15 and PostGIS 3.
#
# tests/stac/ start a real STAC API (stac-fastapi-pgstac on PostgreSQL + PostGIS) on
# 127.0.0.1; the Python side comes from the `dev` extra, the database from here.
# Idempotent: does nothing when both packages are already installed. Runs as root
# (as CI does); `make test` calls it only when run as root.
set -euo pipefail

PACKAGES=(postgresql-15 postgresql-15-postgis-3)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" != "install ok installed" ]; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install_stac_test_deps: ${PACKAGES[*]} already installed; nothing to do"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "install_stac_test_deps: ${missing[*]} missing; run this script as root" >&2
    echo "  (or: sudo apt-get install ${missing[*]})" >&2
    exit 1
fi

echo "install_stac_test_deps: installing ${missing[*]}"
echo "+ apt-get update"
apt-get update -qq
echo "+ apt-get install -y --no-install-recommends ${missing[*]}"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "install_stac_test_deps: done"
