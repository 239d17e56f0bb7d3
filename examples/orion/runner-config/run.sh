#!/bin/bash
# Start the Orion runner from its package directory (the service's working directory):
# export the variables of .env, then replace this shell with orion.
set -euo pipefail
cd "$(dirname "$0")"
set -a
. ./.env
set +a
exec ./orion
