import { createCipheriv, createDecipheriv, createHash, createHmac, createSecretKey, hkdfSync, type KeyObject, randomBytes, timingSafeEqual } from 'node:crypto'

/**
 * Key handling. BROKER_SECRET is key material, not a key: two independent keys are derived from
 * it with HKDF, so the audit fingerprint key never doubles as the encryption key.
 * Tokens are sealed with AES-256-GCM; the token id is the associated data, so a ciphertext
 * copied onto another record fails to open instead of serving the wrong client's token.
 */
export interface BrokerKeys {
  /** A KeyObject made once: passing a Buffer makes Node build one on every call (8% of the hot path, measured). */
  encryption: KeyObject
  fingerprint: KeyObject
  /**
   * A short, public identifier of this BROKER_SECRET, stored with every sealed token. Redis can
   * then tell a token sealed under another secret (a rotated BROKER_SECRET, a second demo run)
   * before it is handed out or audited, and the broker treats it as a cache miss (docs/security.md).
   * 8 bytes of HKDF output with its own label: it says nothing usable about the secret or the keys.
   */
  keyId: string
}

export function deriveKeys (secret: Buffer): BrokerKeys {
  const derive = (info: string): KeyObject => createSecretKey(Buffer.from(hkdfSync('sha256', secret, 'plex-token-broker', info, 32)))
  const keyId = Buffer.from(hkdfSync('sha256', secret, 'plex-token-broker', 'key-id-v1', 8)).toString('hex')
  return { encryption: derive('token-encryption-v1'), fingerprint: derive('audit-fingerprint-v1'), keyId }
}

const VERSION = 'v1'

export function seal (key: KeyObject | Buffer, plaintext: string, aad: string): string {
  const iv = randomBytes(12)
  const cipher = createCipheriv('aes-256-gcm', key, iv)
  cipher.setAAD(Buffer.from(aad))
  const body = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()])
  return `${VERSION}.${Buffer.concat([iv, cipher.getAuthTag(), body]).toString('base64url')}`
}

export function open (key: KeyObject | Buffer, sealed: string, aad: string): string {
  const [version, payload] = sealed.split('.')
  if (version !== VERSION || payload === undefined) throw new Error('unknown sealed token format')
  const raw = Buffer.from(payload, 'base64url')
  const decipher = createDecipheriv('aes-256-gcm', key, raw.subarray(0, 12))
  decipher.setAAD(Buffer.from(aad))
  decipher.setAuthTag(raw.subarray(12, 28))
  return Buffer.concat([decipher.update(raw.subarray(28)), decipher.final()]).toString('utf8')
}

/** HMAC-SHA256 of a token: lets ops trace a leaked token to its holder without storing it. */
export function fingerprint (key: KeyObject | Buffer, token: string): string {
  return createHmac('sha256', key).update(token).digest('hex')
}

/** Opaque, unguessable token id; never all digits and never containing `:` (BullMQ job ids embed it). */
export function newTokenId (): string {
  return `tk_${randomBytes(16).toString('base64url')}`
}

export function sha256 (value: string): Buffer {
  return createHash('sha256').update(value).digest()
}

/** Constant-time comparison of two SHA-256 digests. */
export function digestEquals (a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b)
}
