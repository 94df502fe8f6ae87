import type { LoggerOptions } from 'pino'

/**
 * Every path where a secret could sit in a log line. Redaction is the second line of defence:
 * the code never logs a token on purpose, and test/observability.test.ts and test/tokens.test.ts scan captured output.
 */
export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers["x-plex-token"]',
  'req.headers.cookie',
  'headers.authorization',
  'headers["x-plex-token"]',
  'token',
  'adminToken',
  'secret',
  'password',
  'brokerSecret',
  'brokerSecretPrevious',
  '*.token',
  '*.adminToken',
  '*.secret',
  '*.password',
  '*.brokerSecret',
  '*.brokerSecretPrevious',
  'body.token',
]

/**
 * pino options. On a terminal (a person running `npm run demo` or `npm start` by hand) the lines
 * are pretty-printed when pino-pretty is installed (a dev dependency); anywhere else, JSON.
 */
export function loggerOptions (level: string, tty = false): LoggerOptions {
  let transport: LoggerOptions['transport']
  if (tty) {
    try {
      import.meta.resolve('pino-pretty')
      transport = { target: 'pino-pretty', options: { translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname,service' } }
    } catch {}
  }
  return {
    level,
    ...(transport === undefined ? {} : { transport }),
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    base: { service: 'plex-token-broker' },
    serializers: {
      // The query string is dropped: a careless client could put a token there.
      req: (req: { method: string, url: string, id: string }) => ({ method: req.method, url: String(req.url).split('?')[0], id: req.id }),
    },
  }
}
