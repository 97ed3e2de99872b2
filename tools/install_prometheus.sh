#!/usr/bin/env bash
# Install Prometheus (and promtool) from Debian's `prometheus` package when missing.
#
# Idempotent: does nothing when `prometheus` is already on PATH. The tests start
# their own Prometheus process, so the package's system service is kept from
# starting (a temporary policy-rc.d that denies service starts during the
# install, and the unit stopped/disabled afterwards if systemd runs it anyway).
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "install_prometheus.sh: need root or sudo to apt-get install prometheus" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
# Wait (rather than fail) when another apt/dpkg run holds the lock.
APT=("${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600)
"${APT[@]}" update -qq
# Download first, so the window in which policy-rc.d exists is the install itself.
"${APT[@]}" install -y -qq --no-install-recommends --download-only prometheus >/dev/null

POLICY=/usr/sbin/policy-rc.d
created_policy=0
cleanup() {
    if [ "$created_policy" -eq 1 ]; then
        "${SUDO[@]}" rm -f "$POLICY"
    fi
}
trap cleanup EXIT

if [ ! -e "$POLICY" ]; then
    # 101 = "action forbidden": invoke-rc.d and deb-systemd-invoke skip the start.
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 0755 "$POLICY"
    created_policy=1
fi

"${APT[@]}" install -y -qq --no-install-recommends prometheus >/dev/null

if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    "${SUDO[@]}" systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi

command -v prometheus >/dev/null
command -v promtool >/dev/null
echo "install_prometheus.sh: $(prometheus --version 2>&1 | head -n 1)"
