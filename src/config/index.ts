import { createHash } from 'node:crypto'
import { readClients } from './clients.ts'
import { Env, type ConfigIo } from './env.ts'
import { loadConfigFile } from './file.ts'
import { readProxyPorts, readServers } from './servers.ts'
import {
  readDefaultRateLimit, readLimits, readListen, readPlexTvUrl, readProcess, readProxyDefaults, readRedis, readSecrets, readStreams, readTokenTiming,
  readTrustProxy,
} from './settings.ts'
import type { Config } from './types.ts'

/**
 * Configuration: the environment and the BROKER_CONFIG file, validated once at boot into a
 * frozen, typed Config. A bad value throws ConfigError naming the variable or the file path and
 * what is wrong; server.ts prints that message and exits 1 (never a stack trace). The variables
 * are listed, with their defaults, in ENV_VARIABLES (`env.ts`), .env.example and the README.
 */

export { ENV_VARIABLES, parseDuration, type ConfigIo } from './env.ts'
export { isName, NAME_PATTERN, NAME_RULE } from './names.ts'
export { tokenFromPreferences } from './servers.ts'
export { isLoopbackHost, plexTvUrlProblem } from './settings.ts'
export {
  type ClientConfig, type Config, ConfigError, type HostPort, type LogLevel, type RateLimitConfig, type RedisSentinelConfig, type RedisTlsConfig, type Role, SCOPES,
  type Scope, type ServerConfig,
} from './types.ts'

/**
 * Reads and validates the whole configuration once. Each step reads its variables and records
 * its problems; every problem is reported at once, in one ConfigError, and no message carries a
 * secret. The order of the steps is the order of the messages.
 */
export function loadConfig (vars: Record<string, string | undefined>, io: ConfigIo = {}): Config {
  const env = new Env(vars, io)
  const secrets = readSecrets(env)
  const redis = readRedis(env)
  const runtime = readProcess(env)
  const tokenTiming = readTokenTiming(env)
  const trustProxy = readTrustProxy(env)
  const defaultRateLimit = readDefaultRateLimit(env)
  const plexTvUrl = readPlexTvUrl(env)
  const listen = readListen(env)
  const file = loadConfigFile(env)
  const servers = readServers(env, file)
  const proxyDefaults = readProxyDefaults(env)
  const clients = readClients(env, file, servers, defaultRateLimit, proxyDefaults.proxyKeyLimits)
  const limits = readLimits(env)
  const proxied = readProxyPorts(env, file.label, servers, limits.port)
  const streams = readStreams(env)
  env.check()
  return deepFreeze({
    ...listen,
    ...redis,
    ...secrets,
    ...runtime,
    ...tokenTiming,
    ...limits,
    ...streams,
    ...proxyDefaults,
    trustProxy,
    defaultRateLimit,
    ...(plexTvUrl === undefined ? {} : { plexTvUrl }),
    servers: proxied,
    clients,
    ...(file.exposed === undefined ? {} : { exposedConfigFile: file.exposed }),
  })
}

function deepFreeze<T> (o: T): T {
  if (o !== null && typeof o === 'object' && !Buffer.isBuffer(o) && !Object.isFrozen(o)) {
    Object.freeze(o)
    for (const v of Object.values(o as object)) deepFreeze(v)
  }
  return o
}

/** Fingerprint of the config's servers and clients (no secrets), e.g. for logs at boot. */
export function describeConfig (c: Config): Record<string, unknown> {
  return {
    servers: c.servers.map((s) => ({ name: s.name, url: s.url, tokenSource: s.tokenSource })),
    clients: c.clients.map((cl) => cl.id),
    role: c.role,
    redisPrefix: c.redisPrefix,
    // How Redis is reached (never a password or a host list with credentials).
    redis: {
      mode: c.redisCluster !== undefined ? 'cluster' : c.redisSentinel !== undefined ? 'sentinel' : 'standalone',
      tls: c.redisUrl.startsWith('rediss:'),
      ...(c.redisUsername === undefined ? {} : { user: c.redisUsername }),
      ...(c.redisSentinel === undefined ? {} : { sentinels: c.redisSentinel.sentinels.length, name: c.redisSentinel.name }),
      waitReplicas: c.redisWaitReplicas,
    },
    digest: createHash('sha256').update(JSON.stringify(c.clients.map((cl) => cl.id))).digest('hex').slice(0, 12),
  }
}
