# syntax=docker/dockerfile:1.7
# plex-token-broker: multi-stage build (deps → build → runtime) on Node 24 LTS slim.
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
# dist/cli/ptb.js keeps its `#!/usr/bin/env node` line; executable, it runs as `ptb` (below).
RUN npm run build && chmod 0755 dist/cli/ptb.js

FROM ${NODE_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="plex-token-broker" \
      org.opencontainers.image.description="Brokers Plex Media Server transient tokens to internal services" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="https://github.com/plex-token-broker/plex-token-broker"
# tini reaps zombies and forwards SIGTERM, so graceful shutdown works as PID 1.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*
ENV NODE_ENV=production \
    PORT=8080
WORKDIR /app
COPY --from=deps --chown=node:node /app/node_modules ./node_modules
COPY --from=build --chown=node:node /app/dist ./dist
COPY --chown=node:node package.json ./
# The ops CLI on PATH: `docker compose exec broker ptb servers --json | jq` (no npm banner).
RUN ln -s /app/dist/cli/ptb.js /usr/local/bin/ptb
# The image's built-in unprivileged user.
USER node
EXPOSE 8080
# Liveness only (/healthz): a Redis outage must not get every broker restarted.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.PORT||8080)+'/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["node", "dist/server.js"]
