#!/usr/bin/env bash
# Install the Debian package the storage tests need: nginx (an HTTP server with range requests).
#
# tests/storage/ start nginx on 127.0.0.1 (tests/servers.py, its own configuration, no
# system service) to read COGs through GDAL's /vsicurl/; the S3 server (moto[server])
# and s3fs come from the `dev` extra. Idempotent: does nothing when nginx is installed.
# Runs as root (as CI does); `make test` calls it only when run as root.
set -euo pipefail

if [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1; then
    echo "install_storage_test_deps: nginx already installed; nothing to do"
    exit 0
fi

# nginx-light (Debian 12) is the smallest build; later releases ship only `nginx`.
if [ "$(id -u)" != 0 ]; then
    echo "install_storage_test_deps: nginx missing; run this script as root" >&2
    echo "  (or: sudo apt-get install nginx-light, or nginx)" >&2
    exit 1
fi

echo "+ apt-get update"
apt-get update -qq
package=nginx
if apt-cache show nginx-light >/dev/null 2>&1; then
    package=nginx-light
fi
echo "+ apt-get install -y --no-install-recommends $package"
# policy-rc.d may refuse to start the system service; the tests never use it.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package"
echo "install_storage_test_deps: done"
