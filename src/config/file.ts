import { statSync } from 'node:fs'
import { dirname, extname, resolve } from 'node:path'
import { Type, type Static } from 'typebox'
import { Value } from 'typebox/value'
// js-yaml, not `yaml`: a 50,000-client file parses in 0.3 s with a 250 MB peak instead of 2.3 s and
// 715 MB, and that peak used to stay in the process as RSS (docs/benchmarks.md, footprint).
import { load as parseYaml } from 'js-yaml'
import type { Env } from './env.ts'
import { NAME_PATTERN } from './names.ts'
import { SCOPES } from './types.ts'

/** The BROKER_CONFIG file (YAML, or JSON when the name ends in `.json`): `servers` and `clients`. */

const Duration = Type.String({ pattern: '^(\\d+(ms|s|m|h|d))+$' })

const ServerEntry = Type.Object({
  name: Type.String({ pattern: NAME_PATTERN }),
  url: Type.String({ pattern: '^https?://' }),
  token: Type.Optional(Type.String({ minLength: 1 })),
  tokenFile: Type.Optional(Type.String({ minLength: 1 })),
  preferencesPath: Type.Optional(Type.String({ minLength: 1 })),
  /** The PMS proxy's listener for this server (docs/proxy.md). */
  proxy: Type.Optional(Type.Object({
    port: Type.Integer({ minimum: 1, maximum: 65535 }),
    /** Browser origins allowed to call this listener (CORS); checked by config/settings.ts corsOriginProblem. */
    corsOrigins: Type.Optional(Type.Array(Type.String())),
  }, { additionalProperties: false })),
}, { additionalProperties: false })

const ClientEntry = Type.Object({
  id: Type.String({ pattern: NAME_PATTERN }),
  secretSha256: Type.String({ pattern: '^[0-9a-fA-F]{64}$' }),
  servers: Type.Array(Type.String({ minLength: 1 }), { minItems: 1 }),
  scopes: Type.Array(Type.Union(SCOPES.map((s) => Type.Literal(s))), { minItems: 1 }),
  rateLimit: Type.Optional(Type.Object({ max: Type.Integer({ minimum: 1 }), timeWindow: Duration }, { additionalProperties: false })),
  sources: Type.Optional(Type.Array(Type.String({ pattern: '^(\\*|server://[A-Za-z0-9]+|provider://[A-Za-z0-9._-]+)$' }))),
  // The rules themselves are checked by src/proxy/presets.ts (policyFrom), whose messages name the
  // client and the rule's field; the schema checks the outline only.
  proxy: Type.Optional(Type.Object({
    preset: Type.Optional(Type.String({ minLength: 1 })),
    allow: Type.Optional(Type.Array(Type.Unknown())),
    deny: Type.Optional(Type.Array(Type.Unknown())),
    mode: Type.Optional(Type.Union([Type.Literal('enforce'), Type.Literal('shadow')])),
    allowUrlHosts: Type.Optional(Type.Array(Type.Unknown())),
    limits: Type.Optional(Type.Object({
      requestsPerMinute: Type.Optional(Type.Integer({ minimum: 0, maximum: 1_000_000 })),
      openStreams: Type.Optional(Type.Integer({ minimum: 0, maximum: 100_000 })),
    }, { additionalProperties: false })),
  }, { additionalProperties: false })),
}, { additionalProperties: false })

const FileSchema = Type.Object({
  servers: Type.Optional(Type.Array(ServerEntry)),
  clients: Type.Optional(Type.Array(ClientEntry)),
}, { additionalProperties: false })

export type ServerEntry = Static<typeof ServerEntry>
export type ClientEntry = Static<typeof ClientEntry>

export interface ConfigFile {
  servers: ServerEntry[]
  clients: ClientEntry[]
  /** `BROKER_CONFIG <path>`, the start of every problem found in the file. */
  label: string
  /** Relative token files and Preferences.xml paths are resolved against this directory. */
  dir: string
  /** Set when the file holds admin tokens and the group or others may read it. */
  exposed?: { path: string, mode: string }
}

/**
 * Reads and validates BROKER_CONFIG. When it is unset, or unreadable, or invalid (the problems
 * are recorded, at most 20 schema errors), the file contributes no servers and no clients.
 */
export function loadConfigFile (env: Env): ConfigFile {
  const path = env.get('BROKER_CONFIG')
  const label = `BROKER_CONFIG ${path}`
  const empty: ConfigFile = { servers: [], clients: [], label, dir: process.cwd() }
  if (path === undefined) return empty
  const dir = dirname(resolve(path))
  const text = env.readPath('BROKER_CONFIG', path)
  if (text === undefined) return { ...empty, dir }
  const json = extname(path) === '.json'
  let data: unknown
  try {
    data = json ? JSON.parse(text) : parseYaml(text)
  } catch (err) {
    env.problem(`${label}: not valid ${json ? 'JSON' : 'YAML'}: ${(err as Error).message.split('\n')[0]}`)
  }
  data ??= {}
  const errors = [...Value.Errors(FileSchema, data)].filter((e) => e.keyword !== 'boolean')
  for (const e of errors.slice(0, 20)) {
    const where = e.instancePath.replace(/^\//, '').replace(/\/(\d+)/g, '[$1]').replace(/\//g, '.') || '(top level)'
    const extra = e.keyword === 'additionalProperties' ? ` (${((e.params as { additionalProperties?: string[] }).additionalProperties ?? []).join(', ')})` : ''
    env.problem(`${label}: ${where}: ${e.message}${extra}`)
  }
  if (errors.length > 0) return { ...empty, dir }
  const file = data as Static<typeof FileSchema>
  const exposed = (file.servers ?? []).some((s) => s.token !== undefined) ? readableByOthers(path) : undefined
  return { servers: file.servers ?? [], clients: file.clients ?? [], label, dir, ...(exposed === undefined ? {} : { exposed }) }
}

/** The file's permission bits (`0644`) when the group or others may read it; undefined otherwise or when it cannot be told. */
function readableByOthers (path: string): { path: string, mode: string } | undefined {
  try {
    const mode = statSync(path).mode & 0o777
    return (mode & 0o044) !== 0 ? { path: resolve(path), mode: `0${mode.toString(8).padStart(3, '0')}` } : undefined
  } catch {
    return undefined
  }
}
