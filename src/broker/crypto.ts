import { createCipheriv, createDecipheriv, createHash, createHmac, createSecretKey, hkdfSync, type KeyObject, randomBytes, timingSafeEqual } from 'node:crypto'

/**
 * Key handling (docs/security.md). BROKER_SECRET is key material, not a key: independent keys are
 * derived from it with HKDF, so the audit fingerprint key never doubles as the encryption key.
 * Tokens are sealed with AES-256-GCM; the associated data binds the token id, its client, server
 * and slot, so a ciphertext copied onto another record, or a record a Redis writer points at
 * another client, fails to open instead of serving the wrong client's token.
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

/**
 * The keys of the current BROKER_SECRET and of the previous ones (BROKER_SECRET_PREVIOUS): tokens
 * are sealed with the current keys and opened with whichever secret sealed them (by key id), so
 * the secret can be rotated without re-minting every token.
 */
export interface KeyRing {
  current: BrokerKeys
  /** Every known secret's keys by key id, the current one included. */
  byId: ReadonlyMap<string, BrokerKeys>
}

export function keyRing (current: Buffer, previous: readonly Buffer[] = []): KeyRing {
  const cur = deriveKeys(current)
  const byId = new Map<string, BrokerKeys>([[cur.keyId, cur]])
  for (const p of previous) {
    const k = deriveKeys(p)
    if (!byId.has(k.keyId)) byId.set(k.keyId, k)
  }
  return { current: cur, byId }
}

/** What a sealed token is bound to: opening it for any other record fails. */
export interface SealBinding {
  tokenId: string
  client: string
  server: string
  slot: string
}

const VERSION = 'v2'
const TAG_BYTES = 16

function aadOf (version: string, b: SealBinding): Buffer {
  // v1 (before owner binding) bound the token id only; it is still opened, never written.
  return Buffer.from(version === 'v1' ? b.tokenId : `${b.tokenId}|${b.client}|${b.server}|${b.slot}`)
}

export function seal (key: KeyObject | Buffer, plaintext: string, binding: SealBinding): string {
  const iv = randomBytes(12)
  const cipher = createCipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES })
  cipher.setAAD(aadOf(VERSION, binding))
  const body = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()])
  return `${VERSION}.${Buffer.concat([iv, cipher.getAuthTag(), body]).toString('base64url')}`
}

export function open (key: KeyObject | Buffer, sealed: string, binding: SealBinding): string {
  const [version, payload] = sealed.split('.')
  if ((version !== VERSION && version !== 'v1') || payload === undefined) throw new Error('unknown sealed token format')
  const raw = Buffer.from(payload, 'base64url')
  if (raw.length < 12 + TAG_BYTES) throw new Error('sealed token too short')
  // The tag length is fixed: a truncated tag must not be accepted as a shorter one.
  const decipher = createDecipheriv('aes-256-gcm', key, raw.subarray(0, 12), { authTagLength: TAG_BYTES })
  decipher.setAAD(aadOf(version, binding))
  decipher.setAuthTag(raw.subarray(12, 12 + TAG_BYTES))
  return Buffer.concat([decipher.update(raw.subarray(12 + TAG_BYTES)), decipher.final()]).toString('utf8')
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
