#!/usr/bin/env bash
# Set up a fresh Debian machine for hardway: the lab's Debian packages, the tools the tests use
# (openssl, kubectl, systemd-analyze), HAProxy for the lab's load balancer, and hardway itself with its
# dev extras. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(systemd systemd-container openssh-server openssh-client etcd-server etcd-client
          iproute2 kmod openssl curl haproxy
          containerd runc containernetworking-plugins socat conntrack ipset iputils-ping)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check -e '.[dev]'
