#!/usr/bin/env bash
# The README's second command: set up, then run the whole test suite (unit + integration on
# a real local sandbox), then the static checks. All three run whatever the others said; the
# exit status is non-zero when any of them failed, and the last lines say which.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit $?
.venv/bin/python -m pytest "$@"; pytest_status=$?
{ .venv/bin/ruff check flinger sandbox tests benchmarks && .venv/bin/ruff format --check flinger sandbox tests benchmarks; }
ruff_status=$?
.venv/bin/mypy --strict; mypy_status=$?  # flinger and flinger_sandbox, as pyproject.toml says
echo "test.sh: pytest exit $pytest_status, ruff exit $ruff_status, mypy exit $mypy_status"
[ "$pytest_status" -eq 0 ] && [ "$ruff_status" -eq 0 ] && [ "$mypy_status" -eq 0 ]
