#!/usr/bin/env bash
# The README's second command: set up, then run the whole test suite (unit + integration on
# a real local sandbox), then the static checks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest "$@"
.venv/bin/ruff check flinger sandbox tests benchmarks
.venv/bin/ruff format --check flinger sandbox tests benchmarks
.venv/bin/mypy --strict  # flinger and flinger_sandbox, as pyproject.toml says
