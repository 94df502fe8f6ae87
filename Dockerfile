# plex-token-broker: multi-stage build (deps → build → base → runtime, and `sim` for the PMS
# simulator) on Node 24 LTS slim. No `# syntax=` line: it would make BuildKit fetch a frontend image from
# Docker Hub on every build, and nothing here needs more than the built-in frontend.
# NODE_IMAGE: another Node 24 Debian image where Docker Hub is out of reach (docker/base-images.sh
# builds one from Debian and prints its name).
ARG NODE_IMAGE=node:24-bookworm-slim

# Production dependencies only. Install scripts are skipped: the one optional native addon
# (msgpackr-extract, used by BullMQ) has a pure-JS fallback.
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund

# Compile TypeScript to dist/ with the full toolchain.
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
# The build's second step: the Lua scripts (src/broker/scripts/) land in dist/ next to their module.
COPY bin/copy-assets.js ./bin/
# dist/cli/ptb.js keeps its `#!/usr/bin/env node` line; executable, it runs as `ptb` (below).
# Source maps and declarations serve the client package, not a running broker: dropped here.
# The simulators, the demo and its dev helpers move to dist-sim/ for the `sim` stage only.
RUN npm run build && chmod 0755 dist/cli/ptb.js \
 && find dist \( -name '*.map' -o -name '*.d.ts' \) -delete \
 && mkdir dist-sim && mv dist/sim dist-sim/sim \
 && rm -f dist/demo.js dist/dev-support.js

# What the broker and the simulator share: tini, the production dependencies, the user. Everything
# under /app belongs to root and is read-only to the `node` user they run as, so a compromised
# process cannot rewrite its own code (compose also mounts the root file system read-only).
FROM ${NODE_IMAGE} AS base
# tini reaps zombies and forwards SIGTERM, so graceful shutdown works as PID 1. (A base image
# that already has it, like docker/base-images.sh's, needs no apt.)
RUN if [ ! -x /usr/bin/tini ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends tini \
      && rm -rf /var/lib/apt/lists/*; \
    fi
ENV NODE_ENV=production
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
ENTRYPOINT ["/usr/bin/tini", "--"]

# The PMS simulator compose's `pms-sim` runs (`docker build --target sim`): the simulator alone,
# never in the broker's image. Its health check is compose's (the control port).
FROM base AS sim
COPY --from=build /app/dist-sim/sim ./dist/sim
USER node
EXPOSE 32400 32401
CMD ["node", "dist/sim/main.js"]

# The broker: the last stage, so a plain `docker build .` makes it.
FROM base AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="plex-token-broker" \
      org.opencontainers.image.description="Brokers Plex Media Server transient tokens to internal services" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="https://github.com/plex-token-broker/plex-token-broker"
# PORT and HOST are the container's own: compose publishes 8080 and Prometheus scrapes it, so
# the compose file pins both whatever .env says (publish another host port instead).
ENV HOST=0.0.0.0 \
    PORT=8080
COPY --from=build /app/dist ./dist
# The ops CLI on PATH: `docker compose exec broker ptb servers --json | jq` (no npm banner).
RUN ln -s /app/dist/cli/ptb.js /usr/local/bin/ptb
# The image's built-in unprivileged user.
USER node
# The API; PROXY_PORT (docker-compose.yml: 32402) adds the PMS proxy's listener.
EXPOSE 8080 32402
# Liveness only (/healthz): a Redis outage must not get every broker restarted.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.PORT||8080)+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
CMD ["node", "dist/server.js"]
