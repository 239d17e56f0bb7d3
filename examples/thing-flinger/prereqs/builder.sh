#!/bin/sh
# Install the Rust toolchain for the build user when it is missing (idempotent); omicron's own
# tools/install_builder_prerequisites.sh then installs the rest of its build dependencies.
set -eu
command -v cargo >/dev/null 2>&1 && exit 0
curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
