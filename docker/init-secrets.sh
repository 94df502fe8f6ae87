#!/bin/sh
# Creates the secrets docker-compose.yml mounts. Run it once before the first `docker compose up`:
#
#   sh docker/init-secrets.sh [--force] [DIR]
#
# DIR defaults to $PTB_SECRETS_DIR, else docker/secrets beside this script (what compose mounts).
# A file that exists is kept, so running it again changes nothing; --force makes new ones
# (every client then needs its new secret) except plex-token, which may hold a real admin token:
# delete that file to have it regenerated.
#
#   broker-secret            BROKER_SECRET: base64 of 32 random bytes
#   redis-password           Redis `requirepass`; the broker reads it through REDIS_PASSWORD_FILE
#   plex-token               the PMS admin token. Random here, which suits the bundled simulator; for a
#                            real PMS, replace it with the token `ptb login` saved
#   broker.yaml              BROKER_CONFIG: the clients, holding only SHA-256 digests of their secrets
#   grafana-admin-password   the Grafana `admin` password (`--profile grafana`)
#   metrics-token            METRICS_TOKEN: the bearer token Prometheus sends to the broker's /metrics
#
# The client secrets (thumbnailer: token:issue on the default server; ops: revoke, audit,
# servers, rotate, proxy keys) are printed once, on stdout, and stored nowhere: hand each to its
# service. A third client, homepage, uses the PMS proxy only, through a proxy key ops create.
#
# Permissions: DIR is 0700, so on the host only its owner reaches the files. The files themselves
# are 0644: compose mounts them with their host owner and mode, and the containers read them as
# other users whatever your uid (the broker as `node`, uid 1000; Redis as `redis`, uid 999;
# Grafana as uid 472).
set -eu

force=0
dir=
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "init-secrets.sh: unknown option $arg (use --force, --help)" >&2; exit 2 ;;
    *) dir=$arg ;;
  esac
done
[ -n "$dir" ] || dir=${PTB_SECRETS_DIR:-"$(cd "$(dirname "$0")" && pwd)/secrets"}

umask 077
mkdir -p "$dir"
chmod 0700 "$dir"

random_hex () { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }
random_b64url () { head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n'; }
sha256_hex () {
  # printf is a shell builtin: the secret never appears in a process's arguments.
  if command -v sha256sum >/dev/null 2>&1; then printf '%s' "$1" | sha256sum | cut -d' ' -f1
  elif command -v shasum >/dev/null 2>&1; then printf '%s' "$1" | shasum -a 256 | cut -d' ' -f1
  else printf '%s' "$1" | openssl dgst -sha256 -r | cut -d' ' -f1
  fi
}

# Whether NAME must be (re)written: it is missing or empty, or --force says so.
wanted () { [ "$force" = 1 ] || [ ! -s "$dir/$1" ]; }

# Writes stdin to NAME through a temporary file in DIR, then makes it 0644 (see the header).
put () {
  tmp=$(mktemp "$dir/.$1.XXXXXX")
  cat > "$tmp"
  chmod 0644 "$tmp"
  mv -f "$tmp" "$dir/$1"
}

made=
kept=
note () { if [ "$2" = made ]; then made="$made $1"; else kept="$kept $1"; fi; }

if wanted broker-secret; then head -c 32 /dev/urandom | base64 | tr -d '\n' | put broker-secret; note broker-secret made; else note broker-secret kept; fi
if wanted redis-password; then random_hex 32 | put redis-password; note redis-password made; else note redis-password kept; fi
if [ ! -s "$dir/plex-token" ]; then random_hex 20 | put plex-token; note plex-token made; else note plex-token kept; fi
if wanted grafana-admin-password; then random_hex 16 | put grafana-admin-password; note grafana-admin-password made; else note grafana-admin-password kept; fi
if wanted metrics-token; then random_hex 32 | put metrics-token; note metrics-token made; else note metrics-token kept; fi

if wanted broker.yaml; then
  thumbnailer=ptb_$(random_b64url)
  ops=ptb_$(random_b64url)
  # homepage reaches PMS only through the proxy, with a proxy key: its API secret is thrown away.
  homepage=ptb_$(random_b64url)
  put broker.yaml <<EOF
# Broker config for docker-compose.yml, written by docker/init-secrets.sh.
# The \`default\` server comes from PLEX_URL and PLEX_TOKEN_FILE in the compose file; add more
# servers here. Each client's secretSha256 is the hex SHA-256 of its bearer secret; the secrets
# themselves were printed once and are stored nowhere. \`ptb client add <id>\` prints a new
# secret and the entry to paste here.
servers: []
clients:
  - id: thumbnailer
    secretSha256: "$(sha256_hex "$thumbnailer")"
    servers: [default]
    scopes: [token:issue]
    rateLimit: { max: 600, timeWindow: 1m }
  - id: ops
    secretSha256: "$(sha256_hex "$ops")"
    servers: ["*"]
    scopes: [token:revoke, audit:read, server:read, server:rotate, proxy-key:manage]
  # A dashboard (Homepage, Organizr) on the PMS proxy (PROXY_PORT in docker-compose.yml): ops give
  # it a proxy key with \`ptb proxy-key create --client homepage\`. Proxy-only: nobody holds its
  # API secret (a random one was digested and forgotten).
  - id: homepage
    secretSha256: "$(sha256_hex "$homepage")"
    servers: [default]
    scopes: [token:issue]
    proxy: { preset: dashboard }
EOF
  note broker.yaml made
  cat <<EOF
Client secrets, shown this once and stored nowhere (broker.yaml holds only their SHA-256):

  thumbnailer  $thumbnailer
  ops          $ops

EOF
else
  note broker.yaml kept
fi

echo "Secrets in $dir (directory 0700, files 0644)"
[ -z "$made" ] || echo "  created:$made"
[ -z "$kept" ] || echo "  kept:   $kept (--force makes new ones; plex-token is only made when missing)"
