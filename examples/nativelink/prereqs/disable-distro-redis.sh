#!/bin/sh
# The redis-server package starts its own instance on 127.0.0.1:6379; this deployment runs
# Redis as its own service (nativelink-redis), so the distribution's unit is stopped and
# disabled. Idempotent.
set -eu
if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled --quiet redis-server 2>/dev/null; then
  systemctl disable --now redis-server
fi
