import { type BrokerKeys, fingerprint, type KeyRing, open, seal, type SealBinding } from './crypto.ts'

/**
 * Seals and opens tokens with the BROKER_SECRET key ring (crypto.ts): sealed under the current
 * secret, opened with whichever secret sealed them (by key id), and fingerprinted for the audit
 * trail. Redis only ever sees what this class produces.
 */
/** Most opened tokens kept at once: far more than the live tokens one instance serves in a while. */
const MAX_OPENED = 4096

export class Sealer {
  readonly #ring: KeyRing
  readonly #current: BrokerKeys
  /** Every key id this broker can open, comma-separated (the serve script's test for foreign tokens). */
  readonly kids: string
  /** Opened tokens by key id, binding and ciphertext (see `open`). */
  readonly #opened = new Map<string, { token: string, kid: string }>()

  constructor (ring: KeyRing) {
    this.#ring = ring
    this.#current = ring.current
    this.kids = [...ring.byId.keys()].join(',')
  }

  /** The key id of the current secret, stored with every token it seals. */
  get keyId (): string {
    return this.#current.keyId
  }

  seal (token: string, binding: SealBinding): string {
    return seal(this.#current.encryption, token, binding)
  }

  /**
   * Opens a sealed token with the secret of `kid`, or with each known secret when the record
   * carries no key id (sealed before key ids). `undefined` when none opens it.
   */
  open (sealed: string, binding: SealBinding, kid?: string): { token: string, kid: string } | undefined {
    // A cache hit opens the same record again and again (every proxied request does): the same
    // ciphertext, binding and key id always open to the same token, so the answer is kept. The
    // memo holds what this process already holds while it serves the token, and is cleared when full.
    const memoKey = kid === undefined ? undefined : `${kid}\u0000${binding.tokenId}\u0000${binding.client}\u0000${binding.server}\u0000${binding.slot}\u0000${sealed}`
    if (memoKey !== undefined) {
      const hit = this.#opened.get(memoKey)
      if (hit !== undefined) return hit
    }
    const result = this.#open(sealed, binding, kid)
    if (memoKey !== undefined && result !== undefined) {
      if (this.#opened.size >= MAX_OPENED) this.#opened.clear()
      this.#opened.set(memoKey, Object.freeze(result))
    }
    return result
  }

  #open (sealed: string, binding: SealBinding, kid?: string): { token: string, kid: string } | undefined {
    const keys = kid === undefined ? [...this.#ring.byId.values()] : [this.#ring.byId.get(kid)].filter((k) => k !== undefined)
    for (const k of keys) {
      try {
        return { token: open(k.encryption, sealed, binding), kid: k.keyId }
      } catch {}
    }
    return undefined
  }

  fingerprint (token: string): string {
    return fingerprint(this.#current.fingerprint, token)
  }

  /** The token's fingerprint under every known secret, current first (trace across a rotation). */
  fingerprints (token: string): string[] {
    return [...this.#ring.byId.values()].map((k) => fingerprint(k.fingerprint, token))
  }
}
