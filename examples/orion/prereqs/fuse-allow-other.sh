#!/bin/sh
# Let the orion user's FUSE mounts be used by other users (Scorpio mounts with allow_other).
# Idempotent: the line is added once.
set -eu
touch /etc/fuse.conf
grep -qx 'user_allow_other' /etc/fuse.conf || echo 'user_allow_other' >> /etc/fuse.conf
