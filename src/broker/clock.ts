/**
 * The broker's clock. PMS gives a transient token no expiry, so this clock alone decides what is
 * live and what is due; tests inject one to move time instead of waiting for it.
 */
export class Clock {
  /** Milliseconds since the epoch (bound: pass it around as a function). */
  readonly now: () => number

  constructor (now: () => number = Date.now) {
    this.now = now
  }

  /**
   * Due for renewal: at or past `renewAt`, or issued "in the future", which means this clock
   * stepped back and the token's age is unknown, so it is treated as due.
   */
  due (t: { issuedAt: number, renewAt: number }, now = this.now()): boolean {
    return now >= t.renewAt || t.issuedAt > now
  }
}
