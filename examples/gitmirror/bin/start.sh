#!/bin/sh
# usage: start.sh PROGRAM CONFIG
# Run a GitMirror program (coordinator/server.py or worker/client.py) in the current
# directory, its data directory, where it reads ./config.yaml and keeps its database:
# config.yaml is linked to the config rendered for this server in the current release.
set -eu
ln -sfn "$2" config.yaml
exec python3 "$1"
