#!/usr/bin/env bash
# Install what flinger's demo and tests need on a Debian machine (run as root), then a
# virtual environment in .venv with flinger and its test dependencies. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(openssh-server openssh-client openssh-sftp-server rsync runit sudo passwd python3 python3-venv iproute2 util-linux mount procps ca-certificates
          mmdebstrap systemd-container  # systemd sandbox hosts (--init systemd)
          docker-registry)              # CNCF Distribution: the sandbox's OCI registry (--registry)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts the system sshd on install where it can; the sandbox does not need it.
# It may start the system registry too, on every address's port 5000: the sandbox runs its own.
pkill -f '^/usr/bin/docker-registry serve /etc/docker/registry/config.yml' 2>/dev/null || true

python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: flinger needs Python 3.11+ ($python is $("$python" -V 2>&1))" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]' -e ./sandbox  # flinger, and its test bed (a distribution of its own)
echo "setup: ready (.venv/bin/flinger, .venv/bin/flinger-sandbox)"
