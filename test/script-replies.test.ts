import t from 'tap'
import { MalformedReplyError, readRetireReply, readServeReply, readStoreReply } from '../src/broker/scripts.ts'

// The Lua scripts answer with flat arrays; the broker reads them through these readers so a
// script and its caller out of step fail with an error naming the script, instead of serving a
// token built from missing fields.

t.test('a complete serve reply is read field by field', async (t) => {
  t.same(readServeReply(['hit', 3, 900, 'tid', 'enc', '100', '200', '150', 'mid', '{}', 'k1']), {
    kind: 'hit', count: 3, ttlMs: 900, tokenId: 'tid', enc: 'enc', issuedAt: 100, expiresAt: 200, renewAt: 150, mid: 'mid', meta: '{}', kid: 'k1',
  })
  t.same(readServeReply(['limited', 11, 400]), { kind: 'limited', count: 11, ttlMs: 400 })
  t.same(readServeReply(['miss', 1, 900, 'expired']), { kind: 'miss', count: 1, ttlMs: 900, reason: 'expired' })
  t.same(readStoreReply(['ok', '']), { ok: true, other: undefined })
  t.same(readStoreReply(['conflict', 'cur']), { ok: false, other: 'cur' })
  t.same(readRetireReply([2, 5000]), { count: 2, latestExpiresAt: 5000 })
})

t.test('a short or unknown reply is an error naming the script, never a partial token', async (t) => {
  const sealed = 'v1.sealed-ciphertext'
  const err = t.throws(() => readServeReply(['hit', 1, 900, 'tid', sealed])) as Error
  t.ok(err instanceof MalformedReplyError)
  t.match(err.message, /^serve\.lua replied 'hit' with 5 fields, expected at least 11$/)
  t.notMatch(err.message, sealed, 'the fields themselves are not in the message')
  t.throws(() => readServeReply(['miss', 1]), MalformedReplyError)
  t.throws(() => readServeReply(['bogus', 1, 900]), { message: "serve.lua replied an unknown kind 'bogus'" })
  t.throws(() => readStoreReply(['ok']), MalformedReplyError)
  t.throws(() => readRetireReply([1]), { message: /^retire\.lua replied/ })
})
