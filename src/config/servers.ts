import { resolve } from 'node:path'
import type { Env } from './env.ts'
import { corsOriginProblem } from './settings.ts'
import type { ConfigFile } from './file.ts'
import type { ServerConfig } from './types.ts'

/**
 * The PMS servers: the config file's, then the PLEX_URL shortcut (one server named `default`).
 * Each has exactly one source for its admin token: the value, a token file, or the PMS's own
 * Preferences.xml (docs/plex-api.md §6); the files are watched for changes later
 * (`src/broker/token-files.ts`).
 */

const PLEX_TOKEN_VARIABLES = ['PLEX_TOKEN', 'PLEX_TOKEN_FILE', 'PLEX_PREFERENCES_PATH'] as const

/** Reads `PlexOnlineToken` from a PMS Preferences.xml (an attribute of its `<Preferences …/>` element). */
export function tokenFromPreferences (xml: string): string | undefined {
  const el = /<Preferences\b[^>]*>/.exec(xml)?.[0]
  const m = el === undefined ? undefined : /\sPlexOnlineToken="([^"]*)"/.exec(el)
  return m?.[1] === undefined || m[1] === '' ? undefined : m[1]
}

export function readServers (env: Env, file: ConfigFile): ServerConfig[] {
  const servers: ServerConfig[] = []
  for (const [i, s] of file.servers.entries()) {
    const label = `${file.label}: servers[${i}]`
    if ([s.token, s.tokenFile, s.preferencesPath].filter((x) => x !== undefined).length !== 1) {
      env.problem(`${label}: give exactly one of token, tokenFile, preferencesPath`)
      continue
    }
    const token = adminToken(env, label, {
      token: s.token,
      tokenFile: s.tokenFile === undefined ? undefined : resolve(file.dir, s.tokenFile),
      preferencesPath: s.preferencesPath === undefined ? undefined : resolve(file.dir, s.preferencesPath),
    })
    const cors = s.proxy?.corsOrigins
    for (const [j, o] of (cors ?? []).entries()) {
      const problem = corsOriginProblem(o)
      if (problem !== undefined) env.problem(`${label} "${s.name}": proxy.corsOrigins[${j}]: ${problem}`)
    }
    const proxy = s.proxy === undefined ? undefined : { port: s.proxy.port, ...(cors === undefined ? {} : { corsOrigins: cors }) }
    if (token !== undefined) servers.push({ ...server(s.name, s.url, token), ...(proxy === undefined ? {} : { proxy }) })
  }

  const shortcut = plexUrlServer(env, servers)
  if (shortcut !== undefined) servers.push(shortcut)

  // Only when nothing else is wrong: a broken file or shortcut already says why there is no server.
  if (servers.length === 0 && env.problems.length === 0) env.problem('PLEX_URL or BROKER_CONFIG: no PMS server configured')
  const names = new Set<string>()
  for (const s of servers) {
    if (names.has(s.name)) env.problem(`${file.label}: server "${s.name}" is defined twice`)
    names.add(s.name)
  }
  return servers
}

/** PLEX_URL with one of PLEX_TOKEN, PLEX_TOKEN_FILE, PLEX_PREFERENCES_PATH: the server `default`. */
function plexUrlServer (env: Env, fromFile: ServerConfig[]): ServerConfig | undefined {
  const plexUrl = env.get('PLEX_URL')
  const given = PLEX_TOKEN_VARIABLES.filter((n) => env.get(n) !== undefined)
  if (plexUrl === undefined) {
    for (const n of given) env.problem(`${n}: set PLEX_URL too`)
    return undefined
  }
  if (!/^https?:\/\/[^/?#@]+/.test(plexUrl)) env.problem('PLEX_URL: must be an http(s) URL without credentials')
  else if (given.length !== 1 || given[0] === undefined) env.problem(`PLEX_URL: give exactly one of ${PLEX_TOKEN_VARIABLES.join(', ')} with it`)
  else if (fromFile.some((s) => s.name === 'default')) env.problem('PLEX_URL: defines the server "default", which BROKER_CONFIG defines too')
  else {
    const [variable] = given
    const token = adminToken(env, variable, { token: env.get('PLEX_TOKEN'), tokenFile: env.get('PLEX_TOKEN_FILE'), preferencesPath: env.get('PLEX_PREFERENCES_PATH') })
    if (token !== undefined) return server('default', plexUrl, token)
  }
  return undefined
}

interface AdminToken {
  value: string
  source: ServerConfig['tokenSource']
  path?: string
}

/** The admin token from whichever one source is given; problems are recorded under `label`. */
function adminToken (env: Env, label: string, from: { token?: string, tokenFile?: string, preferencesPath?: string }): AdminToken | undefined {
  if (from.token !== undefined) return { value: from.token, source: 'token' }
  if (from.tokenFile !== undefined) {
    const value = env.readPath(label, from.tokenFile)?.trim()
    if (value === '') env.problem(`${label}: ${from.tokenFile} is empty`)
    return value === undefined || value === '' ? undefined : { value, source: 'tokenFile', path: from.tokenFile }
  }
  if (from.preferencesPath !== undefined) {
    const xml = env.readPath(label, from.preferencesPath)
    if (xml === undefined) return undefined
    const value = tokenFromPreferences(xml)
    if (value === undefined) env.problem(`${label}: ${from.preferencesPath} has no PlexOnlineToken (is the server claimed?)`)
    return value === undefined ? undefined : { value, source: 'preferencesPath', path: from.preferencesPath }
  }
  return undefined
}

function server (name: string, url: string, token: AdminToken): ServerConfig {
  return {
    name,
    url: url.replace(/\/+$/, ''),
    adminToken: token.value,
    tokenSource: token.source,
    ...(token.path === undefined ? {} : { tokenPath: token.path }),
  }
}

/**
 * The proxy listeners' ports: each server's `proxy.port`, or PROXY_PORT for the only server (the
 * PLEX_URL shortcut, or a config file with one server). Every proxy port must differ from the
 * others and from the API's PORT: each listener mirrors PMS paths at its root, so a port can serve
 * one PMS only, and never the broker's own API.
 */
export function readProxyPorts (env: Env, fileLabel: string, servers: readonly ServerConfig[], apiPort: number): ServerConfig[] {
  const raw = env.get('PROXY_PORT')
  let out = [...servers]
  let fromEnv: string | undefined
  if (raw !== undefined) {
    const port = Number(raw)
    if (!/^\d+$/.test(raw) || port < 1 || port > 65535) env.problem(`PROXY_PORT: must be an integer from 1 to 65535, got "${raw}"`)
    else if (servers.length > 1) env.problem(`PROXY_PORT: is for a single server; ${servers.length} are configured, so give each its proxy.port in BROKER_CONFIG`)
    else {
      // At most one server here.
      const [only] = servers
      if (only?.proxy !== undefined) env.problem(`PROXY_PORT: server "${only.name}" has a proxy.port in BROKER_CONFIG too; give it in one place`)
      else if (only !== undefined) {
        out = [{ ...only, proxy: { port } }]
        fromEnv = only.name
      }
    }
  }
  const used = new Map<number, string>()
  for (const s of out) {
    if (s.proxy === undefined) continue
    const p = s.proxy.port
    const where = s.name === fromEnv ? 'PROXY_PORT' : `${fileLabel}: server "${s.name}"`
    if (p === apiPort) env.problem(`${where}: proxy port ${p} is the API's PORT; choose another`)
    const other = used.get(p)
    if (other !== undefined) env.problem(`${where}: proxy port ${p} is server "${other}"'s proxy port too`)
    used.set(p, s.name)
  }
  return out
}
