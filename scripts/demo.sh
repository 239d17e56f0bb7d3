#!/usr/bin/env bash
# The README's first command: set up, then run the whole workflow on a local sandbox.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/flinger-sandbox demo "$@"
