#!/bin/sh
# Install Fustor's agent, its file-system source and HTTP sender from PyPI into a virtualenv
# (idempotent: pip keeps what is already installed).
set -eu
venv=/opt/fustor-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet 'fustor-agent>=0.8.9' fustor-source-fs fustor-sender-http
