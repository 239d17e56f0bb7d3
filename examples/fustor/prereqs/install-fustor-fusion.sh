#!/bin/sh
# Install Fustor's fusion server, its file-system view and HTTP receiver from PyPI into a
# virtualenv (idempotent: pip keeps what is already installed).
set -eu
venv=/opt/fustor-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet 'fustor-fusion>=0.8.9' fustor-view-fs fustor-receiver-http
