#!/bin/sh
# Creates the secret files docker-compose.yml mounts (once; existing files are kept).
# plex-token is the PMS admin token. With the bundled simulator any value works; for a real
# PMS, put the token `ptb login` / `ptb servers discover` gave you.
set -eu
cd "$(dirname "$0")"
mkdir -p secrets
umask 077
[ -s secrets/plex-token ] || head -c 15 /dev/urandom | od -An -tx1 | tr -d ' \n' > secrets/plex-token
[ -s secrets/broker-secret ] || head -c 32 /dev/urandom | base64 > secrets/broker-secret
echo "secrets in $(pwd)/secrets"
