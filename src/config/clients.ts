import { policyFrom } from '../proxy/presets.ts'
import { parseDuration, type Env } from './env.ts'
import type { ConfigFile } from './file.ts'
import type { ProxyKeyLimits } from '../proxy/rules.ts'
import type { ClientConfig, RateLimitConfig, ServerConfig } from './types.ts'

/**
 * The clients of the config file. Ids and secret digests must be unique (a shared secret would
 * make two clients indistinguishable), and every server a client names must be configured. A
 * client's `proxy` rules are compiled here, so an unknown preset or a malformed rule stops the
 * boot with the client's id and the rule's field in the message.
 */
export function readClients (env: Env, file: ConfigFile, servers: readonly ServerConfig[], defaultRateLimit: RateLimitConfig,
  keyLimits: ProxyKeyLimits): ClientConfig[] {
  const names = new Set(servers.map((s) => s.name))
  const clients: ClientConfig[] = []
  const digests = new Set<string>()
  const ids = new Set<string>()
  for (const [i, c] of file.clients.entries()) {
    const label = `${file.label}: clients[${i}]`
    if (ids.has(c.id)) env.problem(`${label}: id "${c.id}" is used twice`)
    ids.add(c.id)
    const hex = c.secretSha256.toLowerCase()
    if (digests.has(hex)) env.problem(`${label}: the same secret as another client`)
    digests.add(hex)
    for (const n of c.servers) if (n !== '*' && !names.has(n)) env.problem(`${label}: server "${n}" is not configured`)
    const sources = c.sources ?? []
    let proxy
    if (c.proxy !== undefined) {
      const built = policyFrom(c.proxy, keyLimits)
      if ('problems' in built) for (const p of built.problems) env.problem(`${label} "${c.id}": ${p}`)
      else proxy = built.policy
    }
    clients.push({
      id: c.id,
      secretSha256: Buffer.from(hex, 'hex'),
      servers: c.servers.includes('*') ? '*' : c.servers,
      scopes: [...new Set(c.scopes)],
      // The file schema has already checked the duration's form.
      rateLimit: c.rateLimit === undefined ? defaultRateLimit : { max: c.rateLimit.max, timeWindowMs: parseDuration(c.rateLimit.timeWindow) },
      sources: sources.includes('*') ? '*' : sources,
      ...(proxy === undefined ? {} : { proxy }),
    })
  }
  return clients
}
