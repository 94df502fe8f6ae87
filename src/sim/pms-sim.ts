import { randomBytes, randomUUID } from 'node:crypto'
import { createServer, STATUS_CODES, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { mediaBytes, parseRange } from './media-bytes.ts'
import { toJson, toXml, type Node } from './media-container.ts'
import { NotificationSockets, WEBSOCKET_PATHS } from './notifications.ts'
import * as library from './pms-library.ts'

/**
 * A Plex Media Server simulator for tests and the demo: the endpoints the broker talks to,
 * answering with the shapes, status codes and bodies of docs/plex-api.md (cited as §n), plus
 * small canned answers for what an ordinary service calls (library sections and items, metadata,
 * sessions, hub search, the notification WebSocket; docs/simulator.md), so a service holding a
 * broker-issued token can be pointed at it.
 * Where the doc marks a behaviour UNCERTAIN, the choice made here is written next to the code.
 */

export interface SimConnection {
  protocol: 'http' | 'https'
  address: string
  port: number
  uri: string
  /** On the server's LAN. */
  local: boolean
  /** Through a Plex relay. */
  relay: boolean
}

/** A source PMS knows, answered by `/security/resources?source=` (§3). */
export interface SimSource {
  /** Prefixed id: `server://<clientIdentifier>` or `provider://<identifier>`. */
  source: string
  name: string
  clientIdentifier: string
  connections: SimConnection[]
}

export interface SimFault {
  /** Delays every response. */
  latencyMs?: number
  /** Every XML or JSON answer also carries the token of its request (`echo="…"`): a PMS that leaks (proxy tests). */
  echoToken?: boolean
  /** Every Nth request (counted from this setFault call) answers 500. */
  failEvery?: number
  /** `/security/token` answers 200 with a body no parser accepts. */
  garbage?: boolean
  /** Ignore `Accept: application/json` and answer XML, as some proxies do. */
  xmlOnly?: boolean
  /** Every request answers this status. */
  status?: number
  /** These paths answer 401 whatever the token (a 401 that is not about the token: the broker's check finds it valid). */
  unauthorizedPaths?: string[]
}

export interface SimCounters {
  requests: number
  /** Transient tokens minted by `/security/token`. */
  mints: number
  /** 401 answers. */
  unauthorized: number
  /**
   * Requests that carried one of this server's admin tokens, present or past (`setAdminTokens`),
   * accepted or not: what a broker whose admin token PMS rejects sends PMS (a 401 storm shows here).
   */
  adminCalls: number
  identity: number
  byPath: Record<string, number>
  /** Requests being answered right now, and the most at once since the last reset (event streams excluded). */
  inFlight: number
  maxInFlight: number
  /** Requests being answered right now, by path (event streams excluded). */
  inFlightByPath: Record<string, number>
}

export interface PmsSimOptions {
  /** Default 0 (any free port); restarts and outages re-listen on the port first bound. */
  port?: number
  /** Default 127.0.0.1. */
  host?: string
  /** Tokens with admin access. Default: one random token. */
  adminTokens?: string[]
  /** Default: 40 random hex characters, like PMS's ProcessedMachineIdentifier (§4). */
  machineIdentifier?: string
  /** Default {@link DEFAULT_VERSION}. */
  version?: string
  friendlyName?: string
  /** Transient tokens die this long after they were minted. Default 48 h (§2: "up to 48 hours"). */
  tokenLifetimeMs?: number
  /** Always answer XML. Default false. */
  xmlOnly?: boolean
  /** Default true. */
  claimed?: boolean
  /** Base latency of every response, in addition to a fault's. Default 0. */
  latencyMs?: number
  /** Sources for `/security/resources`. Default {@link DEFAULT_SOURCES}. */
  sources?: SimSource[]
  /** Interval of the event stream's ping and of the notification WebSockets' ping frames. Default 10 s. */
  pingIntervalMs?: number
  /**
   * Whether a transient token may mint another one. §2 leaves it UNCERTAIN; the default false
   * makes the broker prove it always mints with the admin token.
   */
  transientCanMint?: boolean
  /** Clock for token expiry, for tests. */
  now?: () => number
  /** Sizes of media parts by part id (`/library/parts/<id>/…`); default: the canned library's sizes. */
  partSizes?: Record<string, number>
}

/** What the simulator remembers of one request (`requestLog`). */
export interface SimRequest {
  method: string
  path: string
  /** The X-Plex-Token it carried (header or query), if any. */
  token: string | undefined
  /** The raw query string. */
  query: string
}

export interface RestartOptions {
  /** How long the port refuses connections before PMS is back. Default 0. */
  downForMs?: number
  /** A new version, as after an upgrade. */
  version?: string
  machineIdentifier?: string
}

/** How many requests `requestLog` keeps. */
export const REQUEST_LOG_MAX = 10_000

/** The version the doc's CVE note names as the last affected one (§7), so the broker's warning shows. */
export const DEFAULT_VERSION = '1.42.2.10156-f737b826c'

/** `/security/resources` exists from PMS 1.15.4 on (§3). */
const RESOURCES_MIN_VERSION = [1, 15, 4]

export type PlaybackState = library.PlaybackState | 'stopped'

/** One shared server with a LAN, a public and a relay connection (the §3 example), and one cloud provider. */
export const DEFAULT_SOURCES: SimSource[] = [
  {
    source: 'server://243b471948ace337a8f92f129ec97d1902fcb1df',
    name: 'PlexCorp (plex-corp)',
    clientIdentifier: '243b471948ace337a8f92f129ec97d1902fcb1df',
    connections: [
      plexDirect('10.0.2.123', 32400, true, false),
      plexDirect('64.71.188.222', 32403, false, false),
      plexDirect('139.162.158.105', 8443, false, true),
    ],
  },
  {
    source: 'provider://tv.plex.provider.vod',
    name: 'Movies & Shows',
    clientIdentifier: 'tv.plex.provider.vod',
    connections: [{ protocol: 'https', address: 'vod.provider.plex.tv', port: 443, uri: 'https://vod.provider.plex.tv', local: false, relay: false }],
  },
]

function plexDirect (address: string, port: number, local: boolean, relay: boolean): SimConnection {
  const host = `${address.replaceAll('.', '-')}.93b10b279ff8456686414add109854cd.plex.direct`
  return { protocol: 'https', address, port, uri: `https://${host}:${port}`, local, relay }
}

interface Transient {
  expiresAt: number
}

const XML_TYPE = 'text/xml;charset=utf-8'
const JSON_TYPE = 'application/json'
/** Headers of every PMS answer seen in the 401 capture (§4). */
const PMS_HEADERS = { 'X-Plex-Protocol': '1.0', 'Cache-Control': 'no-cache' }

/** Segments per stream of the simulator's DASH session (10 s each). */
export const DASH_SEGMENTS = 3

/**
 * The MPD of a DASH transcode session, shaped as PMS writes it (its transcoder is FFmpeg's DASH
 * muxer): one Period, a video and an audio AdaptationSet with Representations `0` and `1`, and
 * per AdaptationSet a SegmentTemplate with attributes on lines of their own, whose URIs are
 * relative to the manifest and name the stream with `$RepresentationID$`.
 */
export function dashManifest (session: string): string {
  const template = (indent: string): string => `${indent}<SegmentTemplate timescale="1" duration="10"\n` +
    `${indent}    initialization="session/${session}/$RepresentationID$/header"\n` +
    `${indent}    media="session/${session}/$RepresentationID$/$Number$.m4s"\n` +
    `${indent}    startNumber="0">\n` +
    `${indent}</SegmentTemplate>\n`
  return '<?xml version="1.0" encoding="UTF-8"?>\n' +
    '<MPD xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"\n' +
    '    xmlns="urn:mpeg:dash:schema:mpd:2011"\n' +
    '    xsi:schemaLocation="urn:mpeg:DASH:schema:MPD:2011 http://standards.iso.org/ittf/PubliclyAvailableStandards/MPEG-DASH_schema_files/DASH-MPD.xsd"\n' +
    '    profiles="urn:mpeg:dash:profile:isoff-live:2011"\n' +
    '    type="static"\n' +
    `    mediaPresentationDuration="PT${DASH_SEGMENTS * 10}S"\n` +
    '    maxSegmentDuration="PT10S"\n' +
    '    minBufferTime="PT10S">\n' +
    '  <Period start="PT0S" id="0">\n' +
    '    <AdaptationSet segmentAlignment="true">\n' +
    template('      ') +
    '      <Representation id="0" mimeType="video/mp4" codecs="avc1.640028" bandwidth="2000000" width="1280" height="720">\n' +
    '      </Representation>\n' +
    '    </AdaptationSet>\n' +
    '    <AdaptationSet segmentAlignment="true">\n' +
    template('      ') +
    '      <Representation id="1" mimeType="audio/mp4" codecs="mp4a.40.2" bandwidth="128000" audioSamplingRate="48000">\n' +
    '        <AudioChannelConfiguration schemeIdUri="urn:mpeg:dash:23003:3:audio_channel_configuration:2011" value="2"/>\n' +
    '      </Representation>\n' +
    '    </AdaptationSet>\n' +
    '  </Period>\n' +
    '</MPD>\n'
}

/**
 * The bytes of a DASH session's init segment (`number` undefined) or media segment: deterministic
 * (media-bytes.ts), different per session, stream and segment; undefined past the last segment.
 */
export function dashSegment (session: string, stream: number, number: number | undefined): { seed: number, start: number, end: number } | undefined {
  if (number !== undefined && number >= DASH_SEGMENTS) return undefined
  let h = 0
  for (const c of session) h = (Math.imul(h, 31) + c.charCodeAt(0)) >>> 0
  const seed = (h % 100_000) * 100 + stream * 50 + (number === undefined ? 49 : number)
  const size = number === undefined ? 1200 : stream === 0 ? 96 * 1024 + 17 : 16 * 1024 + 5
  return { seed: 2000 + seed, start: 0, end: size - 1 }
}

/**
 * PMS's HTML error page. For 401 this is byte for byte the §4 capture (91 bytes); the other
 * statuses follow the same pattern, as §2 and §3 only say "text/html".
 */
export function htmlErrorBody (status: number): string {
  const reason = STATUS_CODES[status] ?? 'Error'
  return `<html><head><title>${reason}</title></head><body><h1>${status} ${reason}</h1></body></html>`
}

export class PmsSimulator {
  readonly counters: SimCounters = { requests: 0, mints: 0, unauthorized: 0, adminCalls: 0, identity: 0, byPath: {}, inFlight: 0, maxInFlight: 0, inFlightByPath: {} }
  /** The token each event stream was opened with, oldest first (accepted streams only). */
  readonly eventStreamTokens: string[] = []
  /** The last REQUEST_LOG_MAX requests and upgrades received, oldest first: what a proxy really forwarded. */
  readonly requestLog: SimRequest[] = []

  readonly #host: string
  #port: number
  #adminTokens: string[]
  /** Every token that has been an admin token here, for `counters.adminCalls`. */
  readonly #everAdmin = new Set<string>()
  #machineIdentifier: string
  #version: string
  #claimed: boolean
  readonly #friendlyName: string
  readonly #lifetimeMs: number
  readonly #xmlOnly: boolean
  readonly #baseLatencyMs: number
  readonly #sources: Map<string, SimSource>
  readonly #pingIntervalMs: number
  readonly #transientCanMint: boolean
  readonly #now: () => number
  readonly #partSizes: Map<string, number>
  /** Stands for the server's last update time in `/`; §4 says not to rely on it, so restarts keep it. */
  readonly #updatedAt: number

  readonly #transient = new Map<string, Transient>()
  /** Tokens handed out for other sources: valid there, not on this server. */
  readonly #sourceTokens = new Map<string, Transient & { source: string }>()
  #fault: SimFault = {}
  #faultRequests = 0

  #server: Server | undefined
  #listening: Promise<void> | undefined
  readonly #sockets = new Set<Socket>()
  readonly #streams = new Set<ServerResponse>()
  readonly #webSockets: NotificationSockets
  #playback: library.Playback | undefined
  #sessions = 0
  /** DASH transcode sessions started with `start.mpd`: their segments answer, others' are 404. */
  readonly #dashSessions = new Set<string>()
  /** Bumped when the listener goes away, so a request delayed across a restart never answers. */
  #generation = 0
  #stopped = false

  private constructor (opts: PmsSimOptions) {
    this.#host = opts.host ?? '127.0.0.1'
    this.#port = opts.port ?? 0
    this.#adminTokens = opts.adminTokens?.length ? [...opts.adminTokens] : [randomPlexToken()]
    for (const t of this.#adminTokens) this.#everAdmin.add(t)
    this.#machineIdentifier = opts.machineIdentifier ?? randomBytes(20).toString('hex')
    this.#version = opts.version ?? DEFAULT_VERSION
    this.#claimed = opts.claimed ?? true
    this.#friendlyName = opts.friendlyName ?? 'pms-sim'
    this.#lifetimeMs = opts.tokenLifetimeMs ?? 48 * 3600_000
    this.#xmlOnly = opts.xmlOnly ?? false
    this.#baseLatencyMs = opts.latencyMs ?? 0
    this.#sources = new Map((opts.sources ?? DEFAULT_SOURCES).map((s) => [s.source, s]))
    this.#pingIntervalMs = opts.pingIntervalMs ?? 10_000
    this.#webSockets = new NotificationSockets(this.#pingIntervalMs)
    this.#transientCanMint = opts.transientCanMint ?? false
    this.#now = opts.now ?? Date.now
    this.#partSizes = new Map(Object.entries(opts.partSizes ?? {}))
    this.#updatedAt = Math.floor(this.#now() / 1000)
  }

  static async start (opts: PmsSimOptions = {}): Promise<PmsSimulator> {
    const sim = new PmsSimulator(opts)
    await sim.#listen()
    return sim
  }

  get url (): string {
    const host = this.#host === '0.0.0.0' || this.#host === '::' ? '127.0.0.1' : this.#host
    return `http://${host.includes(':') ? `[${host}]` : host}:${this.#port}`
  }

  get port (): number { return this.#port }
  get adminToken (): string {
    const [current] = this.#adminTokens
    if (current === undefined) throw new Error('the simulator has no admin token: setAdminTokens was given none')
    return current
  }

  get machineIdentifier (): string { return this.#machineIdentifier }
  get version (): string { return this.#version }
  get claimed (): boolean { return this.#claimed }
  /** Whether the port accepts connections now. */
  get isUp (): boolean { return this.#server !== undefined }

  resetCounters (): void {
    // In place: tests keep a reference to the live object.
    this.counters.requests = 0
    this.counters.mints = 0
    this.counters.unauthorized = 0
    this.counters.adminCalls = 0
    this.counters.identity = 0
    this.counters.maxInFlight = this.counters.inFlight
    for (const k of Object.keys(this.counters.byPath)) delete this.counters.byPath[k]
    this.requestLog.length = 0
  }

  /** Admin tokens and live transient tokens: what this server accepts as X-Plex-Token. */
  isTokenValid (token: string): boolean {
    return this.#tokenKind(token) !== undefined
  }

  /** A token `/security/resources` handed out for another source, still within its lifetime. */
  isSourceTokenValid (token: string, source?: string): boolean {
    const t = this.#sourceTokens.get(token)
    return t !== undefined && t.expiresAt > this.#now() && (source === undefined || t.source === source)
  }

  transientTokens (): number {
    this.#prune()
    return this.#transient.size
  }

  /**
   * Test seams that change one restart signal alone, so a test can prove the broker reads each:
   * a new version or machineIdentifier reported while every token lives on, or the
   * notification streams dropped while nothing else changes. A real PMS changes these only
   * together with a restart; the tests use them to check one detection path at a time.
   */
  setIdentity (change: { version?: string, machineIdentifier?: string }): void {
    if (change.version !== undefined) this.#version = change.version
    if (change.machineIdentifier !== undefined) this.#machineIdentifier = change.machineIdentifier
  }

  /** How many `/:/eventsource/notifications` streams are open now. */
  get eventStreams (): number { return this.#streams.size }

  /**
   * Drops every open event stream and nothing else (PMS keeps running, tokens stay valid), as a
   * proxy or a network blip does. Returns how many were dropped.
   */
  dropEventStreams (): number {
    const n = this.#streams.size
    for (const res of [...this.#streams]) res.destroy()
    return n
  }

  // What services see (docs/simulator.md), tested by the simulator suite: out of the broker
  // suite's coverage, like pms-library.ts and notifications.ts.
  /* c8 ignore start */
  /** How many `/:/websockets/notifications` sockets are open now. */
  get webSockets (): number { return this.#webSockets.size }

  /** The playback `/status/sessions` lists, if any. */
  get playback (): library.Playback | undefined {
    return this.#playback === undefined ? undefined : { ...this.#playback }
  }

  /**
   * Starts (or pauses, or moves) the one playback session on a movie or episode of the canned
   * library: `/status/sessions` lists it and every notification WebSocket gets a `playing`
   * notification, as when someone presses play in a Plex app. Playing another item ends the
   * current session first (a `stopped` notification), as a player switching items does.
   */
  play (ratingKey: string, opts: { state?: library.PlaybackState, viewOffset?: number } = {}): void {
    if (!library.playable(ratingKey)) throw new Error(`no movie or episode with ratingKey ${ratingKey}`)
    if (this.#playback !== undefined && this.#playback.ratingKey !== ratingKey) this.stopPlayback()
    const current = this.#playback
    this.#playback = {
      ratingKey,
      state: opts.state ?? 'playing',
      viewOffset: opts.viewOffset ?? current?.viewOffset ?? 0,
      sessionKey: current?.sessionKey ?? String(++this.#sessions),
    }
    this.#notifyPlayback(this.#playback, this.#playback.state)
  }

  /** Ends the playback session (a `stopped` notification); false when nothing was playing. */
  stopPlayback (): boolean {
    const playback = this.#playback
    if (playback === undefined) return false
    this.#playback = undefined
    this.#notifyPlayback(playback, 'stopped')
    return true
  }

  #notifyPlayback (p: library.Playback, state: PlaybackState): void {
    this.#webSockets.notify('playing', 'PlaySessionStateNotification', [library.playSessionState(p, state)])
  }
  /* c8 ignore stop */

  /** Kills one transient token, as a sign-out of its device does; true when it was live. */
  killToken (token: string): boolean {
    return this.#transient.delete(token)
  }

  setAdminTokens (tokens: string[]): void {
    // Transient tokens minted earlier live on: the doc has nothing on revoking an admin token.
    this.#adminTokens = [...tokens]
    for (const t of tokens) this.#everAdmin.add(t)
  }

  /** Replaces the current fault; `setFault({})` clears it. */
  setFault (fault: SimFault): void {
    this.#fault = { ...fault }
    this.#faultRequests = 0
  }

  /**
   * A PMS restart: every transient token dies (§2), every connection drops (event streams and
   * notification WebSockets included, §4), playback ends, the port refuses connections for
   * `downForMs`, and the version may change. Resolves once the server listens again.
   */
  async restart (opts: RestartOptions = {}): Promise<void> {
    await this.#close()
    this.#transient.clear()
    this.#playback = undefined
    // The transcoder's sessions die with the server.
    this.#dashSessions.clear()
    if (opts.version !== undefined) this.#version = opts.version
    if (opts.machineIdentifier !== undefined) this.#machineIdentifier = opts.machineIdentifier
    // A real PMS is down for seconds, so its clients have long seen their kept-alive connections
    // close before it answers again. With no downtime asked for, still let one round of I/O pass,
    // or an in-process client could send its next request on a socket whose close it has not
    // read yet and get a connection error where a real PMS gives it a 401.
    await sleep(opts.downForMs ?? 0)
    await new Promise((resolve) => setImmediate(resolve))
    if (!this.#stopped) await this.#listen()
  }

  /** A network outage: connections refused (or re-allowed), but PMS keeps its tokens. */
  async setDown (down: boolean): Promise<void> {
    if (down) await this.#close()
    else if (this.#server === undefined && !this.#stopped) await this.#listen()
  }

  async stop (): Promise<void> {
    this.#stopped = true
    await this.#close()
  }

  #tokenKind (token: string | undefined): 'admin' | 'transient' | undefined {
    if (token === undefined || token === '') return undefined
    if (this.#adminTokens.includes(token)) return 'admin'
    const t = this.#transient.get(token)
    if (t === undefined) return undefined
    if (t.expiresAt <= this.#now()) {
      this.#transient.delete(token)
      return undefined
    }
    return 'transient'
  }

  #prune (): void {
    const now = this.#now()
    for (const [k, t] of this.#transient) if (t.expiresAt <= now) this.#transient.delete(k)
    for (const [k, t] of this.#sourceTokens) if (t.expiresAt <= now) this.#sourceTokens.delete(k)
  }

  /** One listen at a time: a restart ending while setDown(false) runs must not bind twice. */
  #listen (): Promise<void> {
    this.#listening ??= this.#bind().finally(() => { this.#listening = undefined })
    return this.#listening
  }

  async #bind (): Promise<void> {
    if (this.#server !== undefined) return
    const server = createServer((req, res) => { void this.#handle(req, res) })
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => { void this.#upgrade(req, socket, head) })
    server.on('connection', (socket) => {
      this.#sockets.add(socket)
      socket.once('close', () => this.#sockets.delete(socket))
    })
    // The port can stay busy for a moment after the previous listener closed; PMS comes back on
    // the same port, so retry briefly rather than move.
    for (let attempt = 0; ; attempt++) {
      try {
        await new Promise<void>((resolve, reject) => {
          server.once('error', reject)
          server.listen(this.#port, this.#host, () => {
            server.off('error', reject)
            resolve()
          })
        })
        break
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || this.#port === 0 || attempt >= 20) throw err
        await sleep(50)
      }
    }
    this.#port = (server.address() as AddressInfo).port
    this.#server = server
    // stop() came while binding.
    if (this.#stopped) await this.#close()
  }

  async #close (): Promise<void> {
    const server = this.#server
    if (server === undefined) return
    this.#server = undefined
    this.#generation++
    const closed = new Promise<void>((resolve) => server.close(() => resolve()))
    for (const stream of this.#streams) stream.destroy()
    this.#webSockets.dropAll()
    for (const socket of this.#sockets) socket.destroy()
    server.closeAllConnections()
    await closed
  }

  async #handle (req: IncomingMessage, res: ServerResponse): Promise<void> {
    const generation = this.#generation
    const url = new URL(req.url ?? '/', 'http://pms.invalid')
    const path = url.pathname
    this.#count(req, url)
    // PMS answers browsers on any origin (the web app at app.plex.tv calls it directly): a request
    // with an Origin gets CORS headers allowing it.
    if (typeof req.headers.origin === 'string') res.setHeader('Access-Control-Allow-Origin', '*')
    if (path !== '/:/eventsource/notifications') {
      this.counters.inFlight++
      this.counters.inFlightByPath[path] = (this.counters.inFlightByPath[path] ?? 0) + 1
      this.counters.maxInFlight = Math.max(this.counters.maxInFlight, this.counters.inFlight)
      res.once('close', () => {
        this.counters.inFlight--
        const left = (this.counters.inFlightByPath[path] ?? 1) - 1
        if (left === 0) delete this.counters.inFlightByPath[path]
        else this.counters.inFlightByPath[path] = left
      })
    }

    const fault = this.#fault
    const latency = this.#baseLatencyMs + (fault.latencyMs ?? 0)
    if (latency > 0) await sleep(latency)
    if (generation !== this.#generation || res.destroyed) return

    try {
      if (fault.status !== undefined) return this.#html(res, fault.status)
      if (fault.unauthorizedPaths?.includes(url.pathname) === true) {
        this.counters.unauthorized++
        return this.#html(res, 401)
      }
      if (fault.failEvery !== undefined && fault.failEvery > 0 && ++this.#faultRequests % fault.failEvery === 0) {
        return this.#html(res, 500)
      }
      this.#route(req, res, url)
    } catch {
      if (!res.headersSent) this.#html(res, 500)
      else res.destroy()
    }
  }

  /** Counts a request or an upgrade in `counters`. */
  #count (req: IncomingMessage, url: URL): void {
    const path = url.pathname
    this.counters.requests++
    this.counters.byPath[path] = (this.counters.byPath[path] ?? 0) + 1
    if (path === '/identity') this.counters.identity++
    const token = requestToken(req, url)
    if (token !== undefined && this.#everAdmin.has(token)) this.counters.adminCalls++
    this.requestLog.push({ method: req.method ?? 'GET', path, token, query: url.search.slice(1) })
    if (this.requestLog.length > REQUEST_LOG_MAX) this.requestLog.splice(0, this.requestLog.length - REQUEST_LOG_MAX)
  }

  /* c8 ignore start */
  /**
   * A WebSocket upgrade: the same token rule, faults and latency as any request, then
   * `/:/websockets/notifications`. Refusals are plain HTTP answers with PMS's HTML bodies
   * (a 401 at the upgrade, never a socket that opens and closes).
   */
  async #upgrade (req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const generation = this.#generation
    const url = new URL(req.url ?? '/', 'http://pms.invalid')
    this.#count(req, url)
    socket.on('error', () => {})
    const fault = this.#fault
    const latency = this.#baseLatencyMs + (fault.latencyMs ?? 0)
    if (latency > 0) await sleep(latency)
    if (generation !== this.#generation || socket.destroyed) {
      socket.destroy()
      return
    }
    if (fault.status !== undefined) return rawHtml(socket, fault.status)
    if (fault.failEvery !== undefined && fault.failEvery > 0 && ++this.#faultRequests % fault.failEvery === 0) return rawHtml(socket, 500)
    if (this.#tokenKind(requestToken(req, url)) === undefined) {
      this.counters.unauthorized++
      return rawHtml(socket, 401)
    }
    if (!WEBSOCKET_PATHS.has(url.pathname)) return rawHtml(socket, 404)
    if ((req.method ?? 'GET') !== 'GET') return rawHtml(socket, 405)
    this.#webSockets.accept(req, socket, head, url.searchParams.get('filters'), () => generation === this.#generation)
  }
  /* c8 ignore stop */

  #route (req: IncomingMessage, res: ServerResponse, url: URL): void {
    const path = url.pathname
    const method = req.method ?? 'GET'
    // The two endpoints PMS answers without a token (§4, §5).
    if (path === '/identity') {
      if (method !== 'GET' && method !== 'HEAD') return this.#html(res, 405)
      return this.#send(req, res, this.#identity())
    }
    if (path === '/myplex/claim') {
      if (method !== 'POST') return this.#html(res, 405)
      return this.#claim(req, res, url)
    }

    const token = requestToken(req, url)
    const kind = this.#tokenKind(token)
    if (kind === undefined) {
      this.counters.unauthorized++
      return this.#html(res, 401)
    }

    switch (path) {
      case '/':
        if (method !== 'GET' && method !== 'HEAD') return this.#html(res, 405)
        return this.#send(req, res, this.#root())
      // "responds to all HTTP verbs but POST is preferred" (§2), so no method check.
      case '/security/token':
        return this.#mint(req, res, url, kind)
      case '/security/resources':
        if (method !== 'GET') return this.#html(res, 405)
        return this.#resources(req, res, url)
      case '/:/eventsource/notifications':
        if (method !== 'GET') return this.#html(res, 405)
        this.eventStreamTokens.push(token!)
        return this.#eventStream(res)
      // The owner's account: its authToken is the owner's plex.tv token (here: the admin token).
      case '/myplex/account':
        if (method !== 'GET' && method !== 'HEAD') return this.#html(res, 405)
        return this.#send(req, res, {
          tag: 'MyPlex',
          attrs: { authToken: this.adminToken, username: 'sim-owner', mappingState: 'mapped', signInState: 'ok', subscriptionActive: true },
        })
      // The web app's entry: a redirect, as PMS answers /web (the token echoed, to test who strips it).
      case '/web':
        res.writeHead(302, { ...PMS_HEADERS, Location: `${this.url}/web/index.html?X-Plex-Token=${token!}`, 'Content-Length': 0 })
        res.end()
        return
    }
    if (path.startsWith('/library/parts/')) return this.#part(req, res, path)
    if (path.startsWith('/video/:/transcode/universal/')) return this.#transcode(req, res, url)
    // The rest is the canned media server (docs/simulator.md): read-only, GET or HEAD.
    const answer = library.mediaAnswer({ path, query: url.searchParams, header: (name) => headerValue(req.headers[name]), playback: this.#playback })
    if (method !== 'GET' && method !== 'HEAD') return this.#html(res, WEBSOCKET_PATHS.has(path) || answer !== undefined ? 405 : 404)
    // A plain request to the WebSocket path: the simulator's choice (the sources are silent) is 400.
    if (WEBSOCKET_PATHS.has(path)) return this.#html(res, 400)
    if (typeof answer === 'number') return this.#html(res, answer)
    if (answer === undefined) return this.#html(res, 404)
    return this.#send(req, res, answer)
  }

  /**
   * A media part: deterministic bytes (media-bytes.ts) with Range support as PMS gives it
   * (206 with Content-Range, 416 beyond the end, Accept-Ranges on every answer).
   */
  #part (req: IncomingMessage, res: ServerResponse, path: string): void {
    const method = req.method ?? 'GET'
    if (method !== 'GET' && method !== 'HEAD') return this.#html(res, 405)
    const m = /^\/library\/parts\/(\d+)\/\d+\/file\.\w+$/.exec(path)
    const [, part] = m ?? []
    const size = part === undefined ? undefined : this.#partSizes.get(part) ?? library.partSize(Number(part))
    if (size === undefined) return this.#html(res, 404)
    const range = parseRange(headerValue(req.headers.range), size)
    const base = { ...PMS_HEADERS, 'Accept-Ranges': 'bytes', 'Content-Type': 'video/mp4' }
    if (range === 'unsatisfiable') {
      res.writeHead(416, { ...base, 'Content-Range': `bytes */${size}`, 'Content-Length': 0 })
      res.end()
      return
    }
    const { start, end } = range ?? { start: 0, end: size - 1 }
    res.writeHead(range === undefined ? 200 : 206, {
      ...base,
      'Content-Length': end - start + 1,
      ...(range === undefined ? {} : { 'Content-Range': `bytes ${start}-${end}/${size}` }),
    })
    if (method === 'HEAD') {
      res.end()
      return
    }
    const body = mediaBytes(Number(part), start, end)
    body.pipe(res)
    res.once('close', () => body.destroy())
  }

  /**
   * The universal transcoder's sessions as a player sees them (docs/simulator.md, *Transcode
   * sessions*). HLS: `start.m3u8?session=<id>` answers a master playlist pointing (relatively) at
   * `session/<id>/base/index.m3u8`, which lists three segments. DASH: `start.mpd?session=<id>&
   * protocol=dash` answers an MPD (dashManifest) whose SegmentTemplates lead, relatively, to
   * `session/<id>/<stream>/header` and `session/<id>/<stream>/<n>.m4s`; those answer only for a
   * session that was started. Every request needs a token, as every other one does here.
   */
  #transcode (req: IncomingMessage, res: ServerResponse, url: URL): void {
    const path = url.pathname
    if ((req.method ?? 'GET') !== 'GET') return this.#html(res, 405)
    if (path === '/video/:/transcode/universal/start.mpd') {
      const session = url.searchParams.get('session')
      // The web app always sends protocol=dash with start.mpd; anything else is refused here.
      if (session === null || !/^[\w-]{1,64}$/.test(session) || url.searchParams.get('protocol') !== 'dash') return this.#html(res, 400)
      this.#dashSessions.add(session)
      const body = dashManifest(session)
      res.writeHead(200, { ...PMS_HEADERS, 'Content-Type': 'application/dash+xml', 'Content-Length': Buffer.byteLength(body) })
      res.end(body)
      return
    }
    const dash = /^\/video\/:\/transcode\/universal\/session\/([\w-]{1,64})\/([01])\/(header|(\d{1,6})\.m4s)$/.exec(path)
    if (dash !== null) {
      const [, session = '', stream = '', , number] = dash
      if (!this.#dashSessions.has(session)) return this.#html(res, 404)
      const segment = dashSegment(session, Number(stream), number === undefined ? undefined : Number(number))
      if (segment === undefined) return this.#html(res, 404)
      res.writeHead(200, { ...PMS_HEADERS, 'Content-Type': stream === '0' ? 'video/mp4' : 'audio/mp4', 'Content-Length': segment.end - segment.start + 1 })
      mediaBytes(segment.seed, segment.start, segment.end).pipe(res)
      return
    }
    const m3u8 = (body: string): void => {
      res.writeHead(200, { ...PMS_HEADERS, 'Content-Type': 'application/vnd.apple.mpegurl', 'Content-Length': Buffer.byteLength(body) })
      res.end(body)
    }
    if (path === '/video/:/transcode/universal/start.m3u8') {
      const session = url.searchParams.get('session')
      if (session === null || !/^[\w-]{1,64}$/.test(session)) return this.#html(res, 400)
      return m3u8(`#EXTM3U\n#EXT-X-STREAM-INF:PROGRAM-ID=1,BANDWIDTH=2000000,RESOLUTION=1280x720\nsession/${session}/base/index.m3u8\n`)
    }
    const m = /^\/video\/:\/transcode\/universal\/session\/([\w-]{1,64})\/base\/(index\.m3u8|(\d{5})\.ts)$/.exec(path)
    if (m === null) return this.#html(res, 404)
    if (m[2] === 'index.m3u8') {
      return m3u8('#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n' +
        '#EXTINF:10.0,\n00000.ts\n#EXTINF:10.0,\n00001.ts\n#EXTINF:10.0,\n00002.ts\n#EXT-X-ENDLIST\n')
    }
    const segment = Number(m[3])
    if (segment > 2) return this.#html(res, 404)
    res.writeHead(200, { ...PMS_HEADERS, 'Content-Type': 'video/mp2t', 'Content-Length': 188 * 100 })
    mediaBytes(1000 + segment, 0, 188 * 100 - 1).pipe(res)
  }

  #identity (): Node {
    return {
      tag: 'MediaContainer',
      attrs: { size: 0, claimed: this.#claimed, machineIdentifier: this.#machineIdentifier, version: this.#version },
    }
  }

  #root (): Node {
    // Only the directories the simulator serves (a real PMS lists about twenty more).
    const directories = ['activities', 'clients', 'library', 'playlists']
    return {
      tag: 'MediaContainer',
      attrs: {
        size: directories.length,
        allowCameraUpload: true,
        allowChannelAccess: true,
        allowMediaDeletion: true,
        allowSharing: true,
        allowSync: true,
        allowTuners: true,
        backgroundProcessing: true,
        certificate: true,
        companionProxy: true,
        countryCode: 'usa',
        diagnostics: 'logs,databases,streaminglogs',
        eventStream: true,
        friendlyName: this.#friendlyName,
        hubSearch: true,
        itemClusters: true,
        livetv: 7,
        machineIdentifier: this.#machineIdentifier,
        mediaProviders: true,
        multiuser: true,
        musicAnalysis: 2,
        myPlex: this.#claimed,
        myPlexMappingState: this.#claimed ? 'mapped' : 'unknown',
        myPlexSigninState: this.#claimed ? 'ok' : 'none',
        myPlexSubscription: true,
        myPlexUsername: this.#claimed ? 'sim-owner' : '',
        offlineTranscode: 1,
        ownerFeatures: 'camera_upload,cloudsync,content_filter,dvr,hardware_transcoding,home,lyrics,music_videos,pass,photo_autotags,premium_music_metadata,session_bandwidth_restrictions,sync,trailers,webhooks',
        photoAutoTag: true,
        platform: 'Linux',
        platformVersion: '6.8.0-45-generic',
        pluginHost: true,
        pushNotifications: false,
        readOnlyLibraries: false,
        streamingBrainABRVersion: 3,
        streamingBrainVersion: 2,
        sync: true,
        transcoderActiveVideoSessions: 0,
        transcoderAudio: true,
        transcoderLyrics: true,
        transcoderPhoto: true,
        transcoderSubtitles: true,
        transcoderVideo: true,
        transcoderVideoBitrates: '64,96,208,320,720,1500,2000,3000,4000,8000,10000,12000,20000',
        transcoderVideoQualities: '0,1,2,3,4,5,6,7,8,9,10,11,12',
        transcoderVideoResolutions: '128,128,160,240,320,480,768,720,720,1080,1080,1080,1080',
        updatedAt: this.#updatedAt,
        updater: true,
        version: this.#version,
        voiceSearch: true,
      },
      children: directories.map((key) => ({ tag: 'Directory', attrs: { count: 1, key, title: key } })),
    }
  }

  /** §2: `type=delegation&scope=all` only; the answer carries the token and nothing else (no expiry). */
  #mint (req: IncomingMessage, res: ServerResponse, url: URL, kind: 'admin' | 'transient'): void {
    if (url.searchParams.get('type') !== 'delegation' || url.searchParams.get('scope') !== 'all') return this.#html(res, 400)
    // §2 lists 403 for "a transient token could not be created".
    if (kind === 'transient' && !this.#transientCanMint) return this.#html(res, 403)
    if (this.#fault.garbage === true) {
      const json = this.#wantsJson(req)
      const body = json ? '{"MediaContainer":{"size":0,"tok' : '<MediaContainer size="0" token="transient-'
      res.writeHead(200, { ...PMS_HEADERS, 'Content-Type': json ? JSON_TYPE : XML_TYPE })
      res.end(body)
      return
    }
    this.#prune()
    const token = `transient-${randomUUID()}`
    this.#transient.set(token, { expiresAt: this.#now() + this.#lifetimeMs })
    this.counters.mints++
    this.#send(req, res, { tag: 'MediaContainer', attrs: { size: 0, token } })
  }

  /** §3: admin or transient token (ours all derive from an admin token), PMS ≥ 1.15.4. */
  #resources (req: IncomingMessage, res: ServerResponse, url: URL): void {
    if (!versionAtLeast(this.#version, RESOURCES_MIN_VERSION)) return this.#html(res, 404)
    const id = url.searchParams.get('source')
    if (id === null || id === '') return this.#html(res, 400)
    // The doc lists no status for a well-formed but unknown source; 400 ("parameter ... specified
    // incorrectly") is the closest it offers.
    const source = this.#sources.get(id)
    if (source === undefined) return this.#html(res, 400)
    this.#prune()
    const accessToken = `transient-${randomUUID()}`
    this.#sourceTokens.set(accessToken, { source: id, expiresAt: this.#now() + this.#lifetimeMs })
    this.#send(req, res, {
      tag: 'MediaContainer',
      attrs: { size: 1 },
      children: [{
        tag: 'Device',
        single: true,
        attrs: { name: source.name, clientIdentifier: source.clientIdentifier, accessToken },
        children: source.connections.map((c) => ({
          tag: 'Connection',
          // The §3 XML example writes `relay` only on the relayed connection.
          attrs: { protocol: c.protocol, address: c.address, port: c.port, uri: c.uri, local: c.local, ...(c.relay ? { relay: true } : {}) },
        })),
      }],
    })
  }

  /**
   * §4: a stream that stays open until PMS goes away. PMS's heartbeat format is not in the doc;
   * a named `ping` event with `{}` keeps both the connection and an EventSource client alive.
   * One is sent at once, so a client knows the stream is open.
   */
  #eventStream (res: ServerResponse): void {
    res.writeHead(200, { ...PMS_HEADERS, 'Content-Type': 'text/event-stream', Connection: 'keep-alive' })
    const ping = (): void => { res.write('event: ping\ndata: {}\n\n') }
    ping()
    const timer = setInterval(ping, this.#pingIntervalMs)
    timer.unref()
    this.#streams.add(res)
    res.once('close', () => {
      clearInterval(timer)
      this.#streams.delete(res)
    })
  }

  /**
   * §5: only an unclaimed server can be claimed, with a plex.tv claim token (`claim-…`); it
   * answers the /myplex/account container. The doc names no error statuses: a missing or
   * malformed token is 400, an already claimed server 403.
   */
  #claim (req: IncomingMessage, res: ServerResponse, url: URL): void {
    const token = url.searchParams.get('token')
    if (token === null || !token.startsWith('claim-')) return this.#html(res, 400)
    if (this.#claimed) return this.#html(res, 403)
    this.#claimed = true
    this.#send(req, res, {
      tag: 'MyPlex',
      attrs: {
        username: 'sim-owner',
        mappingState: 'mapped',
        mappingError: '',
        signInState: 'ok',
        privateAddress: '127.0.0.1',
        privatePort: this.#port,
        subscriptionActive: true,
        subscriptionState: 'Active',
      },
    })
  }

  #wantsJson (req: IncomingMessage): boolean {
    if (this.#xmlOnly || this.#fault.xmlOnly === true) return false
    return (headerValue(req.headers.accept) ?? '').includes('application/json')
  }

  /** XML by default, JSON only for `Accept: application/json` (§1). */
  #send (req: IncomingMessage, res: ServerResponse, node: Node): void {
    if (this.#fault.echoToken === true) {
      const token = requestToken(req, new URL(req.url ?? '/', 'http://pms.invalid'))
      if (token !== undefined) node = { ...node, attrs: { ...node.attrs, echo: token } }
    }
    const json = this.#wantsJson(req)
    const body = json ? JSON.stringify({ [node.tag]: toJson(node) }) : `<?xml version="1.0" encoding="UTF-8"?>\n${toXml(node)}\n`
    res.writeHead(200, { ...PMS_HEADERS, 'Content-Type': json ? JSON_TYPE : XML_TYPE, 'Content-Length': Buffer.byteLength(body) })
    res.end(body)
  }

  /** PMS answers errors with HTML whatever the Accept header says (§4). */
  #html (res: ServerResponse, status: number): void {
    const body = htmlErrorBody(status)
    res.writeHead(status, { ...PMS_HEADERS, 'Content-Type': 'text/html', 'Content-Length': Buffer.byteLength(body) })
    res.end(body)
  }
}

function headerValue (v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v
}

/** Every X-Plex-* header may come as a query argument instead (§1). */
function requestToken (req: IncomingMessage, url: URL): string | undefined {
  return headerValue(req.headers['x-plex-token']) ?? url.searchParams.get('X-Plex-Token') ?? undefined
}

/* c8 ignore start */
/** An HTTP answer on a socket that asked for an upgrade: PMS's headers and HTML body (§4), then the end. */
function rawHtml (socket: Duplex, status: number): void {
  const body = htmlErrorBody(status)
  const head = [
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}`,
    ...Object.entries(PMS_HEADERS).map(([k, v]) => `${k}: ${v}`),
    'Content-Type: text/html',
    `Content-Length: ${Buffer.byteLength(body)}`,
    'Connection: close',
  ].join('\r\n')
  socket.end(`${head}\r\n\r\n${body}`)
}
/* c8 ignore stop */

/** Looks like a plex.tv token: 20 characters of [A-Za-z0-9_-]. */
function randomPlexToken (): string {
  return randomBytes(15).toString('base64url')
}

/**
 * Its own version check rather than the broker's compareVersions: the simulator is the yardstick
 * for the broker, so it must not share the broker's bugs.
 */
function versionAtLeast (version: string, min: number[]): boolean {
  const [release = ''] = version.split('-')
  const parts = release.split('.').map((p) => Number.parseInt(p, 10) || 0)
  for (const [i, want] of min.entries()) {
    const d = (parts[i] ?? 0) - want
    if (d !== 0) return d > 0
  }
  return true
}
