import type { LoggerOptions } from 'pino'

/**
 * Every path where a secret could sit in a log line. Redaction is the second line of defence:
 * the code never logs a token on purpose, and test/logging.test.ts scans captured output.
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
  '*.token',
  '*.adminToken',
  '*.secret',
  '*.password',
  '*.brokerSecret',
  'body.token',
]

export function loggerOptions (level: string): LoggerOptions {
  return {
    level,
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    base: { service: 'plex-token-broker' },
    serializers: {
      // The query string is dropped: a careless client could put a token there.
      req: (req: { method: string, url: string, id: string }) => ({ method: req.method, url: String(req.url).split('?')[0], id: req.id }),
    },
  }
}
