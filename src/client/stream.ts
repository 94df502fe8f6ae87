import { createParser, type EventSourceMessage } from 'eventsource-parser'
import { type Dispatcher, request } from 'undici'
import { retryAfterMs } from './http.ts'

/** An event of the broker's token stream (README, *Push channel*). */
export interface StreamEvent {
  event: string
  data: string
  id: string | undefined
}

export interface OpenStreamOptions {
  url: URL
  secret: string
  lastEventId: string | undefined
  dispatcher: Dispatcher
  /** Silence (no byte, not even a `: ping`) after which the stream counts as dead. */
  idleTimeoutMs: number
  /** Time to wait for the response headers. */
  headersTimeoutMs: number
  signal: AbortSignal
  /** Called once the broker answered 200 with an event stream, before any event. */
  onOpen: () => void
  onEvent: (event: StreamEvent) => void
  /** The last `id:` seen, whether or not its block carried data. */
  onId: (id: string) => void
  onRetry: (ms: number) => void
}

export type StreamOutcome =
  /** The stream was open and has ended: by the broker, a dead connection, or silence. */
  | { opened: true, events: number, error?: unknown }
  /** The stream could not be opened: no connection, or an answer that is not an event stream. */
  | { opened: false, statusCode: number, code?: string, retryAfterMs?: number, error?: unknown }

/** An event longer than this is refused and the stream dropped (the broker's events are < 2 KiB). */
const MAX_EVENT_CHARS = 1024 * 1024

/**
 * Opens `GET /v1/tokens/stream` once and reads it to its end. Resolves (never rejects) with how it
 * went, so the caller decides between reconnecting and polling.
 */
export async function readStream (o: OpenStreamOptions): Promise<StreamOutcome> {
  const headers: Record<string, string> = {
    accept: 'text/event-stream',
    authorization: `Bearer ${o.secret}`,
    'cache-control': 'no-cache',
  }
  if (o.lastEventId !== undefined) headers['last-event-id'] = o.lastEventId
  let res: Dispatcher.ResponseData
  try {
    res = await request(o.url, {
      method: 'GET',
      headers,
      signal: o.signal,
      dispatcher: o.dispatcher,
      headersTimeout: o.headersTimeoutMs,
      // undici's body timeout is the time between two chunks: the heartbeat watchdog.
      bodyTimeout: o.idleTimeoutMs,
    })
  } catch (error) {
    return { opened: false, statusCode: 0, error }
  }
  const type = String(res.headers['content-type'] ?? '')
  if (res.statusCode !== 200 || !type.toLowerCase().startsWith('text/event-stream')) {
    let code: string | undefined
    try {
      const body = await res.body.text()
      const parsed = JSON.parse(body) as { code?: unknown }
      if (typeof parsed.code === 'string') code = parsed.code
    } catch {
      // Not the broker's JSON error (a proxy's page, a cut connection): the status says enough.
    }
    return { opened: false, statusCode: res.statusCode, code, retryAfterMs: retryAfterMs(res.headers['retry-after']) }
  }

  o.onOpen()
  let events = 0
  let parseError: unknown
  const parser = createParser({
    maxBufferSize: MAX_EVENT_CHARS,
    onId: o.onId,
    onRetry: o.onRetry,
    onEvent: (message: EventSourceMessage) => {
      events++
      o.onEvent({ event: message.event ?? 'message', data: message.data, id: message.id })
    },
    // Unknown fields and bad `retry:` values are skipped, as EventSource does; only an endless
    // event ends the stream. (The parser's error carries the offending line: never kept.)
    onError: (err) => { if (err.type === 'max-buffer-size-exceeded') parseError = new Error('an event grew past 1 MiB') },
  })
  res.body.setEncoding('utf8')
  try {
    for await (const chunk of res.body) {
      parser.feed(chunk as string)
      if (parseError !== undefined) {
        res.body.destroy()
        return { opened: true, events, error: parseError }
      }
    }
    return { opened: true, events }
  } catch (error) {
    return { opened: true, events, error }
  }
}
